"""The scheduler's waiting queue, one class per ``--scheduling-policy``; each also says where
an admitted request goes in the running list (the scheduler hands out budget in that order
and preempts from its end).

``fcfs``: arrival order; a request put back (preempted, or skipped while its grammar compiles)
goes to the front; admitted requests join the end of the running list, so the newest is
preempted first. ``priority`` (vLLM's rule): the lowest ``priority`` value first, then the
earliest arrival; a request put back takes its place by that same key, so a preempted request
resumes ahead of newer requests of its priority; the running list is kept in the same order,
so the request preempted first is the one of lowest priority (latest arrival among equals).
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Iterable, Iterator

from pagedlm.engine.request import Request


class FCFSQueue(deque):
    def add(self, request: Request) -> None:
        self.append(request)

    def put_back(self, requests: Iterable[Request]) -> None:
        """Back to the front, in the given order."""
        self.extendleft(reversed(list(requests)))

    @staticmethod
    def add_running(running: list[Request], request: Request) -> None:
        running.append(request)


class PriorityQueue:
    def __init__(self) -> None:
        self._keys: list[tuple[int, float, int]] = []
        self._requests: list[Request] = []
        self._seq = 0  # ties of (priority, arrival): insertion order

    def add(self, request: Request) -> None:
        key = (*_key(request), self._seq)
        self._seq += 1
        i = bisect.bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self._requests.insert(i, request)

    def put_back(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.add(request)

    def popleft(self) -> Request:
        self._keys.pop(0)
        return self._requests.pop(0)

    def remove(self, request: Request) -> None:
        i = self._requests.index(request)
        del self._keys[i], self._requests[i]

    def __getitem__(self, index: int) -> Request:
        return self._requests[index]

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    @staticmethod
    def add_running(running: list[Request], request: Request) -> None:
        """Kept sorted by (priority, arrival)."""
        bisect.insort_right(running, request, key=_key)


def _key(request: Request) -> tuple[int, float]:
    return request.priority, request.arrival_time


def make_waiting_queue(policy: str) -> FCFSQueue | PriorityQueue:
    if policy == "fcfs":
        return FCFSQueue()
    if policy == "priority":
        return PriorityQueue()
    raise ValueError(f"unknown scheduling policy {policy!r} (fcfs or priority)")
