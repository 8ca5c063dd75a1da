"""Block pool, prefix cache and per-request block tables (pure Python, no torch).

Invariants:
- Every block exists from start-up. A block is either owned (ref_cnt > 0) or in the free
  queue (ref_cnt == 0), never both.
- The free queue is in eviction order: the head is evicted first. A freed block keeps its
  hash, so a later prefix hit revives it until it is handed out again (then the hash goes).
- A full block's hash is H(parent hash, its token ids, extra keys): a chain, so equal hashes
  mean equal prefixes. sha256, never Python's hash().
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from pagedlm.engine.request import Request

_ROOT_HASH = b"pagedlm-prefix-root"


def hash_block_tokens(parent_hash: bytes | None, token_ids: list[int] | tuple[int, ...], extra: str | None = None) -> bytes:
    h = hashlib.sha256()
    h.update(parent_hash if parent_hash is not None else _ROOT_HASH)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    if extra:
        h.update(b"\x00extra\x00" + extra.encode())
    return h.digest()


class KVCacheBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: bytes | None = None
        self.prev_free: KVCacheBlock | None = None
        self.next_free: KVCacheBlock | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(id={self.block_id}, ref={self.ref_cnt}, hashed={self.block_hash is not None})"


class FreeBlockQueue:
    """Doubly linked list of free blocks: O(1) pop from the head, append, and removal from
    the middle (when a prefix hit revives a free block)."""

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self._head = KVCacheBlock(-1)
        self._tail = KVCacheBlock(-1)
        self._head.next_free, self._tail.prev_free = self._tail, self._head
        self.num_free_blocks = 0
        for block in blocks:
            self.append(block)

    def popleft(self) -> KVCacheBlock:
        if self.num_free_blocks == 0:
            raise ValueError("no free blocks")
        block = self._head.next_free
        assert block is not None
        self.remove(block)
        return block

    def remove(self, block: KVCacheBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None, f"{block} is not in the free queue"
        prev.next_free, nxt.prev_free = nxt, prev
        block.prev_free = block.next_free = None
        self.num_free_blocks -= 1

    def append(self, block: KVCacheBlock) -> None:
        last = self._tail.prev_free
        assert last is not None
        last.next_free, block.prev_free = block, last
        block.next_free, self._tail.prev_free = self._tail, block
        self.num_free_blocks += 1

    def block_ids(self) -> list[int]:
        """Free block ids in eviction order (for tests and debugging)."""
        ids, node = [], self._head.next_free
        while node is not None and node is not self._tail:
            ids.append(node.block_id)
            node = node.next_free
        return ids


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[bytes, KVCacheBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.free_queue.num_free_blocks

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def get_cached_block(self, block_hash: bytes) -> KVCacheBlock | None:
        return self.cached.get(block_hash)

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        """Take a reference on prefix-hit blocks, reviving any that sit in the free queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def allocate(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks > self.num_free_blocks:
            raise ValueError(f"cannot allocate {num_blocks} blocks, {self.num_free_blocks} free")
        out = []
        for _ in range(num_blocks):
            block = self.free_queue.popleft()
            self._evict(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def _evict(self, block: KVCacheBlock) -> None:
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) is block:
                del self.cached[block.block_hash]
            block.block_hash = None

    def free(self, blocks: list[KVCacheBlock]) -> None:
        """Drop a reference; blocks that reach zero join the free queue in the given order."""
        for block in blocks:
            block.ref_cnt -= 1
            assert block.ref_cnt >= 0, f"double free of {block}"
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    def uncache(self, block: KVCacheBlock) -> None:
        """A free block stops being findable by its hash (it stays in the free queue)."""
        self._evict(block)

    def register(self, block: KVCacheBlock, block_hash: bytes) -> None:
        """Make a full block findable by its hash (a duplicate of a cached block stays private)."""
        if block.block_hash is None and block_hash not in self.cached:
            block.block_hash = block_hash
            self.cached[block_hash] = block

    def reset_prefix_cache(self) -> bool:
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self.cached.clear()
        return True


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens served from cache
    requests: int = 0


@dataclass
class KVCacheManager:
    num_blocks: int
    block_size: int
    enable_caching: bool = True
    pool: BlockPool = field(init=False)
    req_to_blocks: dict[str, list[KVCacheBlock]] = field(init=False, default_factory=dict)
    num_registered: dict[str, int] = field(init=False, default_factory=dict)
    stats: PrefixCacheStats = field(init=False, default_factory=PrefixCacheStats)

    def __post_init__(self) -> None:
        self.pool = BlockPool(self.num_blocks, self.enable_caching)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def usage(self) -> float:
        return self.pool.usage()

    def update_block_hashes(self, request: Request) -> None:
        """Extend request.block_hashes to cover every full block of its tokens."""
        hashes = request.block_hashes
        bs = self.block_size
        while (len(hashes) + 1) * bs <= request.num_tokens:
            start = len(hashes) * bs
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block_tokens(parent, request.all_token_ids[start : start + bs],
                                             request.block_extra(start, start + bs)))

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of the request, in whole blocks. The last token is never
        served from cache, so the step still computes it and produces logits. Nothing for a
        request that skips reading the cache (SamplingParams.skip_reading_prefix_cache, and any
        request with prompt_logprobs)."""
        params = request.sampling_params  # (prompt_logprobs may be set after the params were made)
        if not self.enable_caching or params.skip_reading_prefix_cache or params.prompt_logprobs is not None:
            return [], 0
        self.update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        self.stats.requests += 1
        self.stats.queries += request.num_tokens
        self.stats.hits += len(hits) * self.block_size
        return hits, len(hits) * self.block_size

    def allocate_slots(
        self, request: Request, num_new_tokens: int, new_computed_blocks: list[KVCacheBlock] | None = None,
        num_lookahead_tokens: int = 0,
    ) -> list[KVCacheBlock] | None:
        """Blocks for ``num_new_tokens`` more tokens after the computed ones (and after any
        prefix-hit blocks given), plus ``num_lookahead_tokens`` scratch slots a speculative
        proposer writes past them. Returns the newly allocated blocks, or None if the pool
        cannot supply them (nothing is changed then). Only blocks full of the request's own
        tokens are ever hashed, never draft or lookahead slots."""
        hits = new_computed_blocks or []
        owned = self.req_to_blocks.setdefault(request.request_id, [])
        num_computed = request.num_computed_tokens + len(hits) * self.block_size
        num_required = -(-(num_computed + num_new_tokens + num_lookahead_tokens) // self.block_size)
        if not hits and num_required <= len(owned):
            # The common decode step: the token lands in a block the request already owns.
            if self.enable_caching and (num_computed + num_new_tokens) % self.block_size == 0:
                self._register_full_blocks(request, num_computed + num_new_tokens)
            return []
        num_new_blocks = max(0, num_required - len(owned) - len(hits))
        num_revived = sum(1 for b in hits if b.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free_blocks - num_revived:
            if not owned:
                del self.req_to_blocks[request.request_id]
            return None
        self.pool.touch(hits)
        owned.extend(hits)
        new_blocks = self.pool.allocate(num_new_blocks)
        owned.extend(new_blocks)
        if self.enable_caching:
            self._register_full_blocks(request, num_computed + num_new_tokens)
        return new_blocks

    def _register_full_blocks(self, request: Request, num_tokens_after_step: int) -> None:
        # Blocks full once this step runs get their hash now: any request scheduled later
        # (even in this same step, since every layer writes K/V before attending) may hit them.
        self.update_block_hashes(request)
        owned = self.req_to_blocks[request.request_id]
        num_full = min(num_tokens_after_step // self.block_size, len(request.block_hashes))
        start = self.num_registered.get(request.request_id, 0)
        for i in range(start, num_full):
            self.pool.register(owned[i], request.block_hashes[i])
        self.num_registered[request.request_id] = max(start, num_full)

    def trim(self, request: Request, num_tokens: int) -> int:
        """Roll back to ``num_tokens`` computed tokens (after rejected drafts): blocks past the
        last one those tokens touch go back to the pool, tail first. They were never hashed
        (hashes cover the request's accepted tokens only). Returns how many blocks remain."""
        owned = self.req_to_blocks.get(request.request_id)
        if owned is None:
            return 0
        num_keep = -(-num_tokens // self.block_size)
        if len(owned) > num_keep:
            tail = owned[num_keep:]
            del owned[num_keep:]
            assert all(b.block_hash is None or b.ref_cnt > 1 for b in tail), "a hashed block was rolled back"
            self.pool.free(list(reversed(tail)))
        return len(owned)

    def free(self, request: Request, uncache: bool = False) -> None:
        """Release the request's blocks, tail first, so its unshared tail is evicted first.
        ``uncache``: their KV is not what their hashes say (it ran without its LoRA adapter);
        those no other request holds lose their hash."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_registered.pop(request.request_id, None)
        self.pool.free(list(reversed(blocks)))
        if uncache:
            for block in blocks:
                if block.ref_cnt == 0:
                    self.pool.uncache(block)

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, [])]

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
