"""Time-ordered ids (UUIDv7, made by uuid-utils) and lease tokens from :mod:`dspex.records`."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

from dspex.records import new_id, new_token


def _stamp(eid: str) -> int:
    return uuid.UUID(eid).int >> 80


def test_ids_are_rfc_9562_version_7_uuid_strings() -> None:
    before = time.time_ns() // 1_000_000
    eid = new_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(eid)
    assert type(eid) is str
    assert str(parsed) == eid
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    # The first 48 bits are the Unix time in milliseconds.
    assert before <= _stamp(eid) <= after


def test_ids_made_in_one_millisecond_are_unique_and_increasing() -> None:
    ids = [new_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert len({_stamp(eid) for eid in ids}) < len(ids)  # many shared a millisecond
    for eid in ids[::997]:
        parsed = uuid.UUID(eid)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)


def test_a_new_millisecond_keeps_the_order() -> None:
    first = later = new_id()
    while _stamp(later) == _stamp(first):
        later = new_id()
    assert _stamp(later) > _stamp(first)
    assert first < later


def test_threads_never_share_an_id_and_each_sees_its_ids_increase() -> None:
    made: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(len(made))

    def make(out: list[str]) -> None:
        start.wait()
        out.extend(new_id() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [eid for out in made for eid in out]
    assert len(set(every)) == len(every)
    for out in made:
        assert out == sorted(out)


def test_a_forked_child_never_repeats_its_parents_ids_and_keeps_the_order() -> None:
    before = [new_id() for _ in range(1000)]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: ids of its own, sent back as JSON
        try:
            with os.fdopen(write_end, "w") as out:
                json.dump([new_id() for _ in range(20_000)], out)
        finally:
            os._exit(0)
    os.close(write_end)
    parent = [new_id() for _ in range(20_000)]  # at the same time as the child
    with os.fdopen(read_end) as source:
        child = json.load(source)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child) == 20_000
    assert set(child).isdisjoint(parent)
    assert set(child).isdisjoint(before)
    assert before + child == sorted(before + child)
    assert before + parent == sorted(before + parent)


def test_lease_tokens_are_random_hex() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for token in list(tokens)[:10]:
        assert len(token) == 32
        int(token, 16)
