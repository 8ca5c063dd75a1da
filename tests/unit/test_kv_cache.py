"""Block pool, free queue and prefix cache: pure Python, fake sizes, no torch.

Every test checks block ids, ref counts, free counts, the free queue's eviction order and
the cached hashes after each operation, and ends with every block free (no leaks).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pagedlm.engine.kv_cache import (
    BlockPool,
    FreeBlockQueue,
    KVCacheBlock,
    KVCacheManager,
    hash_block_tokens,
)
from pagedlm.engine.request import Request
from pagedlm.sampling_params import SamplingParams

REPO_ROOT = Path(__file__).resolve().parents[2]
BS = 4  # block size used throughout


def make_request(req_id: str, prompt: list[int], cache_salt: str | None = None, **params) -> Request:
    return Request(req_id, prompt, SamplingParams(**params), eos_token_id=None, cache_salt=cache_salt)


def ref_cnts(manager_or_pool) -> list[int]:
    pool = manager_or_pool.pool if isinstance(manager_or_pool, KVCacheManager) else manager_or_pool
    return [b.ref_cnt for b in pool.blocks]


def check_pool(pool: BlockPool) -> None:
    """Structural invariants: a block is owned (ref > 0) xor in the free queue; the cache
    maps each hash to a block carrying that hash."""
    free_ids = pool.free_queue.block_ids()
    assert len(free_ids) == len(set(free_ids)) == pool.num_free_blocks
    for block in pool.blocks:
        assert block.ref_cnt >= 0
        assert (block.ref_cnt == 0) == (block.block_id in free_ids), block
    for block_hash, block in pool.cached.items():
        assert block.block_hash == block_hash


def check_manager(manager: KVCacheManager) -> None:
    check_pool(manager.pool)
    expected = [0] * manager.num_blocks
    for blocks in manager.req_to_blocks.values():
        assert len({b.block_id for b in blocks}) == len(blocks), "a request holds a block twice"
        for b in blocks:
            expected[b.block_id] += 1
    assert ref_cnts(manager) == expected


def assert_all_free(manager: KVCacheManager) -> None:
    check_manager(manager)
    assert manager.num_free_blocks == manager.num_blocks
    assert manager.req_to_blocks == {}
    assert all(b.ref_cnt == 0 for b in manager.pool.blocks)


def hit_ids(manager: KVCacheManager, request: Request) -> tuple[list[int], int]:
    blocks, num_tokens = manager.get_computed_blocks(request)
    return [b.block_id for b in blocks], num_tokens


def admit(manager: KVCacheManager, request: Request) -> list[int]:
    """Schedule a whole prompt the way the scheduler admits a waiting request."""
    hits, num_hit_tokens = manager.get_computed_blocks(request)
    new = manager.allocate_slots(request, request.num_tokens - num_hit_tokens, hits)
    assert new is not None
    request.num_computed_tokens = request.num_tokens
    check_manager(manager)
    return manager.get_block_ids(request.request_id)


# ---- no torch -----------------------------------------------------------------------


def test_engine_core_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import pagedlm.engine.kv_cache, pagedlm.engine.scheduler, pagedlm.engine.request\n"
        "import pagedlm.engine.messages, pagedlm.config, pagedlm.sampling_params\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---- FreeBlockQueue -----------------------------------------------------------------


def test_free_queue_append_popleft_remove_order_and_counts():
    blocks = [KVCacheBlock(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    assert queue.block_ids() == [0, 1, 2, 3, 4]
    assert queue.num_free_blocks == 5

    assert queue.popleft() is blocks[0]
    assert queue.block_ids() == [1, 2, 3, 4] and queue.num_free_blocks == 4
    assert blocks[0].prev_free is None and blocks[0].next_free is None

    queue.remove(blocks[2])  # from the middle
    assert queue.block_ids() == [1, 3, 4] and queue.num_free_blocks == 3
    assert blocks[2].prev_free is None and blocks[2].next_free is None

    queue.remove(blocks[4])  # the tail
    queue.remove(blocks[1])  # the head
    assert queue.block_ids() == [3] and queue.num_free_blocks == 1

    queue.append(blocks[2])
    queue.append(blocks[0])
    assert queue.block_ids() == [3, 2, 0] and queue.num_free_blocks == 3
    assert [queue.popleft().block_id for _ in range(3)] == [3, 2, 0]
    assert queue.block_ids() == [] and queue.num_free_blocks == 0
    with pytest.raises(ValueError):
        queue.popleft()

    queue.append(blocks[4])  # usable again after being emptied
    assert queue.block_ids() == [4] and queue.num_free_blocks == 1


def test_free_queue_remove_of_block_not_in_queue_is_refused():
    blocks = [KVCacheBlock(i) for i in range(2)]
    queue = FreeBlockQueue(blocks)
    queue.popleft()
    with pytest.raises(AssertionError):
        queue.remove(blocks[0])
    assert queue.block_ids() == [1] and queue.num_free_blocks == 1


# ---- BlockPool ------------------------------------------------------------------------


def test_pool_allocate_takes_from_head_and_refuses_overdraw():
    pool = BlockPool(5, enable_caching=True)
    blocks = pool.allocate(2)
    assert [b.block_id for b in blocks] == [0, 1]
    assert ref_cnts(pool) == [1, 1, 0, 0, 0]
    assert pool.num_free_blocks == 3 and pool.free_queue.block_ids() == [2, 3, 4]
    assert pool.usage() == pytest.approx(0.4)
    with pytest.raises(ValueError):
        pool.allocate(4)
    assert pool.num_free_blocks == 3 and pool.free_queue.block_ids() == [2, 3, 4]
    check_pool(pool)
    pool.free(blocks)
    assert pool.num_free_blocks == 5 and pool.free_queue.block_ids() == [2, 3, 4, 0, 1]
    check_pool(pool)


def test_pool_allocate_evicts_hash_of_reused_block():
    pool = BlockPool(3, enable_caching=True)
    h0, h1 = hash_block_tokens(None, [1, 2]), hash_block_tokens(None, [3, 4])
    b0, b1 = pool.allocate(2)
    pool.register(b0, h0)
    pool.register(b1, h1)
    assert pool.cached == {h0: b0, h1: b1}
    pool.free([b1, b0])  # b1 evicted first
    assert pool.free_queue.block_ids() == [2, 1, 0]
    # Freed blocks keep their hash until reused.
    assert pool.get_cached_block(h0) is b0 and pool.get_cached_block(h1) is b1

    (first,) = pool.allocate(1)  # block 2: never hashed
    assert first.block_id == 2 and set(pool.cached) == {h0, h1}
    (second,) = pool.allocate(1)  # block 1: its hash goes
    assert second is b1 and b1.block_hash is None and b1.ref_cnt == 1
    assert pool.cached == {h0: b0} and pool.get_cached_block(h1) is None
    assert pool.free_queue.block_ids() == [0]
    check_pool(pool)
    pool.free([first, second])
    check_pool(pool)
    assert pool.num_free_blocks == 3


def test_pool_touch_revives_a_freed_cached_block_and_counts_sharers():
    pool = BlockPool(4, enable_caching=True)
    h = hash_block_tokens(None, [7, 7])
    (block,) = pool.allocate(1)
    pool.register(block, h)
    pool.free([block])
    assert block.ref_cnt == 0 and pool.free_queue.block_ids() == [1, 2, 3, 0]

    pool.touch([block])  # a prefix hit revives it
    assert block.ref_cnt == 1 and block.block_hash == h
    assert pool.free_queue.block_ids() == [1, 2, 3] and pool.num_free_blocks == 3
    pool.touch([block])  # a second sharer
    assert block.ref_cnt == 2 and pool.num_free_blocks == 3
    check_pool(pool)

    pool.free([block])
    assert block.ref_cnt == 1 and pool.free_queue.block_ids() == [1, 2, 3]
    pool.free([block])
    assert block.ref_cnt == 0 and pool.free_queue.block_ids() == [1, 2, 3, 0]
    assert pool.get_cached_block(h) is block
    check_pool(pool)
    with pytest.raises(AssertionError):  # double free
        pool.free([block])


def test_pool_register_keeps_duplicates_private():
    pool = BlockPool(3, enable_caching=True)
    h = hash_block_tokens(None, [1, 2, 3, 4])
    a, b = pool.allocate(2)
    pool.register(a, h)
    pool.register(b, h)  # same content computed twice: the first stays the cached one
    assert pool.cached == {h: a} and a.block_hash == h and b.block_hash is None
    pool.free([a, b])
    (c,) = pool.allocate(1)  # block 2
    assert c.block_id == 2
    (d,) = pool.allocate(1)  # block 0 (a) is reused: its hash goes
    assert d is a and pool.cached == {}
    pool.free([c, d])
    check_pool(pool)


def test_pool_reset_prefix_cache_only_when_all_free():
    pool = BlockPool(2, enable_caching=True)
    h = hash_block_tokens(None, [1])
    (block,) = pool.allocate(1)
    pool.register(block, h)
    assert pool.reset_prefix_cache() is False
    assert pool.cached == {h: block}
    pool.free([block])
    assert pool.reset_prefix_cache() is True
    assert pool.cached == {} and block.block_hash is None
    check_pool(pool)


# ---- hashes ------------------------------------------------------------------------


def test_hash_chain_properties():
    root = hash_block_tokens(None, [1, 2, 3, 4])
    assert isinstance(root, bytes) and len(root) == 32
    assert root == hash_block_tokens(None, (1, 2, 3, 4))  # deterministic, list or tuple
    assert root != hash_block_tokens(None, [1, 2, 3, 5])
    assert root != hash_block_tokens(None, [4, 3, 2, 1])
    child = hash_block_tokens(root, [5, 6, 7, 8])
    other_root = hash_block_tokens(None, [9, 9, 9, 9])
    # Same tokens under a different parent: a different hash (equal hash = equal prefix).
    assert child != hash_block_tokens(other_root, [5, 6, 7, 8])
    assert child != hash_block_tokens(None, [5, 6, 7, 8])
    assert child == hash_block_tokens(root, [5, 6, 7, 8])
    # Extra keys (cache salt, LoRA) change the hash.
    assert hash_block_tokens(None, [1, 2, 3, 4], "salt") != root
    assert hash_block_tokens(None, [1, 2, 3, 4], "salt") != hash_block_tokens(None, [1, 2, 3, 4], "pepper")
    assert hash_block_tokens(None, [1, 2, 3, 4], "salt") == hash_block_tokens(None, [1, 2, 3, 4], "salt")


def test_hash_is_stable_across_processes():
    """Python's hash() of str is salted per process; the block hash must not be."""
    code = (
        "from pagedlm.engine.kv_cache import hash_block_tokens as h\n"
        "print(h(h(None, [1, 2, 3, 4], 'salt'), [5, 6, 7, 8], 'salt').hex())\n"
    )
    outs = set()
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.returncode == 0, result.stderr
        outs.add(result.stdout.strip())
    local = hash_block_tokens(hash_block_tokens(None, [1, 2, 3, 4], "salt"), [5, 6, 7, 8], "salt").hex()
    assert outs == {local}


def test_request_block_hashes_chain_over_full_blocks_only():
    manager = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(10)))  # 2 full blocks + 2 tokens
    manager.update_block_hashes(a)
    assert len(a.block_hashes) == 2
    h0 = hash_block_tokens(None, [0, 1, 2, 3])
    assert a.block_hashes == [h0, hash_block_tokens(h0, [4, 5, 6, 7])]

    b = make_request("b", list(range(8)) + [50, 51, 52, 53])  # equal first two blocks
    manager.update_block_hashes(b)
    assert b.block_hashes[:2] == a.block_hashes and len(b.block_hashes) == 3

    c = make_request("c", [99] + list(range(1, 12)))  # differs in block 0 only
    manager.update_block_hashes(c)
    assert all(x != y for x, y in zip(c.block_hashes, b.block_hashes))  # the chain carries it

    salted = make_request("s", list(range(10)), cache_salt="tenant-1")
    manager.update_block_hashes(salted)
    assert len(salted.block_hashes) == 2
    assert all(x != y for x, y in zip(salted.block_hashes, a.block_hashes))

    # Generated tokens extend the chain once they fill a block.
    for token in (10, 11):
        a.append_output_token(token)
    manager.update_block_hashes(a)
    assert len(a.block_hashes) == 3 and a.block_hashes[2] == hash_block_tokens(a.block_hashes[1], [8, 9, 10, 11])
    assert_all_free(manager)


# ---- KVCacheManager: allocation and freeing ---------------------------------------------


def test_allocate_slots_grows_by_blocks_and_free_is_tail_first():
    manager = KVCacheManager(num_blocks=6, block_size=BS)
    req = make_request("r", list(range(6)))
    new = manager.allocate_slots(req, 6)  # 6 tokens -> 2 blocks
    assert [b.block_id for b in new] == [0, 1]
    req.num_computed_tokens = 6
    # One full block registered (tokens 0..3), the second is partial.
    assert list(manager.pool.cached.values()) == [manager.pool.blocks[0]]
    assert manager.num_registered["r"] == 1
    check_manager(manager)

    # Tokens 7 and 8 fill block 1; token 9 needs block 2.
    for token, expect_new in ((100, []), (101, []), (102, [2])):
        req.append_output_token(token)
        new = manager.allocate_slots(req, 1)
        assert [b.block_id for b in new] == expect_new
        req.num_computed_tokens += 1
        check_manager(manager)
    # After computing 9 tokens, block 1 is full and registered; block 2 is not.
    assert {b.block_id for b in manager.pool.cached.values()} == {0, 1}
    assert manager.get_block_ids("r") == [0, 1, 2]
    assert manager.num_free_blocks == 3 and manager.pool.free_queue.block_ids() == [3, 4, 5]

    manager.free(req)
    # Tail first: block 2 (the unshared tail) is evicted before 1, then 0.
    assert manager.pool.free_queue.block_ids() == [3, 4, 5, 2, 1, 0]
    assert "r" not in manager.num_registered
    assert_all_free(manager)


def test_allocate_slots_returns_none_and_changes_nothing_when_short():
    manager = KVCacheManager(num_blocks=3, block_size=BS)
    a = make_request("a", list(range(8)))
    admit(manager, a)
    b = make_request("b", list(range(100, 109)))  # 9 tokens -> 3 blocks, only 1 free
    before = (manager.pool.free_queue.block_ids(), ref_cnts(manager), dict(manager.pool.cached))
    assert manager.allocate_slots(b, 9) is None
    assert (manager.pool.free_queue.block_ids(), ref_cnts(manager), dict(manager.pool.cached)) == before
    assert "b" not in manager.req_to_blocks
    assert manager.allocate_slots(b, 4) is not None  # a chunk that fits
    assert manager.get_block_ids("b") == [2]
    manager.free(a)
    manager.free(b)
    assert_all_free(manager)


def test_allocate_slots_counts_revived_hits_against_free_blocks():
    """Reviving a free cached block takes it out of the free queue, so it cannot also be
    handed out as a new block."""
    manager = KVCacheManager(num_blocks=4, block_size=BS)
    a = make_request("a", list(range(9)))  # blocks 0,1 full+cached, 2 partial
    admit(manager, a)
    manager.free(a)
    assert manager.pool.free_queue.block_ids() == [3, 2, 1, 0]

    filler = make_request("f", [500])  # hold one block so that 3 are free
    assert [b.block_id for b in manager.allocate_slots(filler, 1)] == [3]
    assert manager.pool.free_queue.block_ids() == [2, 1, 0]

    # 8 cached tokens + 8 new tokens: 2 revived + 2 new = 4 > 3 free.
    b = make_request("b", list(range(16)))
    hits, num_hit = manager.get_computed_blocks(b)
    assert [h.block_id for h in hits] == [0, 1] and num_hit == 8
    assert manager.allocate_slots(b, 8, hits) is None
    assert manager.pool.free_queue.block_ids() == [2, 1, 0] and ref_cnts(manager) == [0, 0, 0, 1]
    check_manager(manager)
    # 8 cached + 4 new: 2 revived + 1 new = 3 free: fits.
    new = manager.allocate_slots(b, 4, hits)
    assert [x.block_id for x in new] == [2]
    assert manager.get_block_ids("b") == [0, 1, 2] and manager.num_free_blocks == 0
    check_manager(manager)
    manager.free(b)
    manager.free(filler)
    assert_all_free(manager)


# ---- prefix cache ------------------------------------------------------------------


def test_prefix_hit_longest_full_block_prefix_and_sharing_ref_counts():
    manager = KVCacheManager(num_blocks=10, block_size=BS)
    a = make_request("a", list(range(10)))  # blocks: [0..3] [4..7] [8,9]
    assert hit_ids(manager, a) == ([], 0)
    assert admit(manager, a) == [0, 1, 2]
    assert manager.num_free_blocks == 7

    b = make_request("b", list(range(8)) + [77, 78, 79])  # shares two full blocks
    assert hit_ids(manager, b) == ([0, 1], 8)
    assert admit(manager, b) == [0, 1, 3]
    assert ref_cnts(manager)[:4] == [2, 2, 1, 1]
    assert manager.num_free_blocks == 6

    c = make_request("c", list(range(4)) + [9, 9, 9, 9, 9])  # shares only block 0
    assert hit_ids(manager, c) == ([0], 4)
    d = make_request("d", [1000] + list(range(1, 10)))  # differs in the first token: no hit
    assert hit_ids(manager, d) == ([], 0)

    manager.free(a)  # shared blocks keep b's reference
    assert ref_cnts(manager)[:4] == [1, 1, 0, 1]
    assert manager.pool.free_queue.block_ids() == [4, 5, 6, 7, 8, 9, 2]
    check_manager(manager)
    manager.free(b)
    assert manager.pool.free_queue.block_ids() == [4, 5, 6, 7, 8, 9, 2, 3, 1, 0]
    assert_all_free(manager)


def test_fully_cached_prompt_of_whole_blocks_leaves_last_block_to_compute():
    manager = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(12)))  # exactly 3 blocks
    admit(manager, a)
    assert len(manager.pool.cached) == 3

    b = make_request("b", list(range(12)))
    # The last token is never served from cache: k*block_size tokens give k-1 blocks.
    assert hit_ids(manager, b) == ([0, 1], 8)
    hits, num_hit = manager.get_computed_blocks(b)
    new = manager.allocate_slots(b, 12 - num_hit, hits)
    assert [x.block_id for x in new] == [3]
    # The recomputed last block duplicates a cached one: it stays private.
    assert manager.pool.blocks[3].block_hash is None and len(manager.pool.cached) == 3
    check_manager(manager)

    c = make_request("c", list(range(13)))  # one more token: all 3 blocks hit
    assert hit_ids(manager, c) == ([0, 1, 2], 12)
    one = make_request("one", [0])  # a single token never hits
    assert hit_ids(manager, one) == ([], 0)
    manager.free(a)
    manager.free(b)
    assert_all_free(manager)


def test_prefix_hit_revives_blocks_after_owner_finished():
    manager = KVCacheManager(num_blocks=6, block_size=BS)
    a = make_request("a", list(range(10)))
    assert admit(manager, a) == [0, 1, 2]
    manager.free(a)
    assert manager.pool.free_queue.block_ids() == [3, 4, 5, 2, 1, 0]
    assert_all_free(manager)

    b = make_request("b", list(range(9)))
    assert hit_ids(manager, b) == ([0, 1], 8)
    assert admit(manager, b) == [0, 1, 3]  # revived 0,1 + new block 3 from the head
    assert ref_cnts(manager) == [1, 1, 0, 1, 0, 0]
    assert manager.pool.free_queue.block_ids() == [4, 5, 2]
    # Block 2 held a's partial tail (never hashed); 0 and 1 keep theirs.
    assert manager.pool.blocks[0].block_hash == b.block_hashes[0]
    assert manager.pool.blocks[1].block_hash == b.block_hashes[1]
    manager.free(b)
    assert_all_free(manager)


def test_lru_eviction_least_recently_freed_first_and_tail_before_head():
    manager = KVCacheManager(num_blocks=6, block_size=BS)
    a = make_request("a", list(range(8)))  # 2 full blocks
    b = make_request("b", list(range(100, 108)))  # 2 full blocks
    assert admit(manager, a) == [0, 1]
    assert admit(manager, b) == [2, 3]
    manager.free(a)  # freed first: evicted first, tail (1) before head (0)
    manager.free(b)
    assert manager.pool.free_queue.block_ids() == [4, 5, 1, 0, 3, 2]
    assert_all_free(manager)

    # An unrelated request takes 3 blocks: the two never-used ones, then a's tail.
    x = make_request("x", list(range(200, 212)))
    assert admit(manager, x) == [4, 5, 1]
    assert manager.pool.free_queue.block_ids() == [0, 3, 2]
    a2 = make_request("a2", list(range(9)))
    assert hit_ids(manager, a2) == ([0], 4)  # a's tail hash evicted, its head survives
    b2 = make_request("b2", list(range(100, 109)))
    assert hit_ids(manager, b2) == ([2, 3], 8)

    y = make_request("y", list(range(300, 304)))  # one more block: a's head goes next
    assert admit(manager, y) == [0]
    assert hit_ids(manager, a2) == ([], 0)
    assert hit_ids(manager, b2) == ([2, 3], 8)

    manager.free(y)
    assert manager.pool.free_queue.block_ids() == [3, 2, 0]
    # Reviving b's blocks makes them recently used: freed again, they go behind x's.
    hits, _ = manager.get_computed_blocks(b2)
    assert [n.block_id for n in manager.allocate_slots(b2, 1, hits)] == [0]
    assert manager.pool.free_queue.block_ids() == [] and ref_cnts(manager) == [1] * 6
    manager.free(x)
    manager.free(b2)
    assert manager.pool.free_queue.block_ids() == [1, 5, 4, 0, 3, 2]
    assert_all_free(manager)


def test_prompt_logprobs_requests_skip_the_cache():
    manager = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(10)))
    admit(manager, a)
    lp = make_request("lp", list(range(10)), prompt_logprobs=2)
    # Prompt logprobs need every prompt position computed: no hit at all.
    assert hit_ids(manager, lp) == ([], 0)
    assert manager.stats.requests == 1  # only a's lookup was counted
    assert admit(manager, lp) == [3, 4, 5]
    assert ref_cnts(manager)[:6] == [1, 1, 1, 1, 1, 1]
    manager.free(a)
    manager.free(lp)
    assert_all_free(manager)


def test_caching_disabled_gives_no_hits_and_no_hashes():
    manager = KVCacheManager(num_blocks=6, block_size=BS, enable_caching=False)
    a = make_request("a", list(range(10)))
    assert admit(manager, a) == [0, 1, 2]
    assert manager.pool.cached == {}
    assert all(b.block_hash is None for b in manager.pool.blocks)
    b = make_request("b", list(range(10)))
    assert hit_ids(manager, b) == ([], 0)
    assert admit(manager, b) == [3, 4, 5]
    manager.free(a)
    manager.free(b)
    c = make_request("c", list(range(10)))
    assert hit_ids(manager, c) == ([], 0)
    assert manager.stats.queries == 0 and manager.stats.hits == 0
    assert_all_free(manager)


def test_cache_salt_isolates_prefixes():
    manager = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(9)), cache_salt="alice")
    admit(manager, a)
    assert hit_ids(manager, make_request("b", list(range(9)), cache_salt="bob")) == ([], 0)
    assert hit_ids(manager, make_request("n", list(range(9)))) == ([], 0)
    assert hit_ids(manager, make_request("a2", list(range(9)), cache_salt="alice")) == ([0, 1], 8)
    manager.free(a)
    assert_all_free(manager)


def test_prefix_cache_stats_count_queried_and_hit_tokens():
    manager = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(10)))
    admit(manager, a)
    assert (manager.stats.requests, manager.stats.queries, manager.stats.hits) == (1, 10, 0)
    b = make_request("b", list(range(9)))
    admit(manager, b)
    assert (manager.stats.requests, manager.stats.queries, manager.stats.hits) == (2, 19, 8)
    c = make_request("c", list(range(4)) + [50, 51])
    admit(manager, c)
    assert (manager.stats.requests, manager.stats.queries, manager.stats.hits) == (3, 25, 12)
    for r in (a, b, c):
        manager.free(r)
    assert_all_free(manager)


def test_reset_prefix_cache_via_manager():
    manager = KVCacheManager(num_blocks=4, block_size=BS)
    a = make_request("a", list(range(9)))
    admit(manager, a)
    assert manager.reset_prefix_cache() is False
    manager.free(a)
    assert manager.reset_prefix_cache() is True
    assert hit_ids(manager, make_request("b", list(range(9)))) == ([], 0)
    assert_all_free(manager)


def test_cache_salt_cannot_spell_an_adapter_key():
    """A salt that reads like an adapter's key does not share that adapter's blocks."""
    manager = KVCacheManager(num_blocks=8, block_size=BS)
    adapter = make_request("a", list(range(9)))
    adapter.lora_request = {"name": "x", "id": 1, "path": "/p"}
    admit(manager, adapter)
    for salt in ("lora:1:/p", "lora:1:2:/p"):
        assert hit_ids(manager, make_request("f", list(range(9)), cache_salt=salt)) == ([], 0)
    twin = make_request("t", list(range(9)))
    twin.lora_request = {"name": "x", "id": 1, "path": "/p"}
    assert hit_ids(manager, twin) == ([0, 1], 8)
    manager.free(adapter)
    assert_all_free(manager)
