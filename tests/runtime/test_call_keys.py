"""The per-call keys of unseeded random ops (irkit.runtime.call_keys): a seeded sequence
is the documented function of (seed, call number); unseeded sequences differ between
loads and between a process and a child forked after loading; keys taken from several
threads at once are all distinct."""

from __future__ import annotations

import os
import threading
import warnings

import pytest

from irkit.runtime.artifact import ArtifactError
from irkit.runtime.call_keys import CallKeys, call_key, random_seed_option


def test_seeded_keys_are_the_documented_sequence() -> None:
    keys = CallKeys(7)
    taken = [keys.next() for _ in range(5)]
    assert taken == [call_key(7, n) for n in range(5)]
    assert all(0 <= k < 2**63 for k in taken) and len(set(taken)) == 5
    assert [CallKeys(7).next() for _ in range(2)] == [taken[0]] * 2
    assert CallKeys(8).next() != taken[0]
    assert CallKeys().next() != CallKeys().next()  # os.urandom bases


def test_random_seed_option_is_checked() -> None:
    assert random_seed_option(None, "here") is None
    assert random_seed_option(2**64 - 1, "here") == 2**64 - 1
    for bad in (-1, 2**64, True, 1.5, "3"):
        with pytest.raises(ArtifactError, match=r"random_seed=.* must be an int between 0"):
            random_seed_option(bad, "here")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_other_keys_unless_seeded() -> None:
    fresh, seeded = CallKeys(), CallKeys(3)
    read, write = os.pipe()
    with warnings.catch_warnings():  # "this process is multi-threaded": the child
        warnings.simplefilter("ignore", DeprecationWarning)  # only writes to a pipe
        pid = os.fork()
    if pid == 0:  # the child: report its next keys, then leave without cleanup
        os.write(write, f"{fresh.next()} {seeded.next()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_fresh, child_seeded = map(int, pipe.read().split())
    os.waitpid(pid, 0)
    assert child_fresh != fresh.next()
    assert child_seeded == seeded.next() == call_key(3, 0)


def test_keys_from_several_threads_are_distinct() -> None:
    keys = CallKeys(1)
    found: list[list[int]] = [[] for _ in range(4)]

    def take(into: list[int]) -> None:
        into.extend(keys.next() for _ in range(2000))

    threads = [threading.Thread(target=take, args=(f,)) for f in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [k for f in found for k in f]
    assert sorted(every) == sorted(call_key(1, n) for n in range(8000))
