"""The one textopt event loop behind every sync call: same loop from scripts, threads and running loops;
a clear error instead of a deadlock; max_concurrency held for every kind of caller; identical requests in
flight sent once."""
from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import textopt as to
from textopt._sync import LoopReentryError, _mailbox, run_sync, textopt_loop
from textopt.engines.cache import DiskCache

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "q"}]
_var: contextvars.ContextVar[str] = contextvars.ContextVar("_var", default="unset")


async def _where() -> tuple[str, str]:
    await asyncio.sleep(0)
    return threading.current_thread().name, _var.get()


def test_no_loop_thread_at_import_and_one_after_use():
    code = (
        "import threading, textopt as to; names = lambda: sorted(t.name for t in threading.enumerate()); "
        "before = names(); to.ScriptedEngine('x').complete([{'role': 'user', 'content': 'q'}]); "
        "to.ScriptedEngine('y').complete([{'role': 'user', 'content': 'q'}]); print(before, names())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['MainThread'] ['MainThread', 'textopt-loop']"


def test_every_sync_call_lands_on_the_one_loop_with_the_callers_contextvars():
    _var.set("main")
    results = {"script": run_sync(_where())}

    def in_thread() -> None:
        _var.set("thread")
        results["thread"] = run_sync(_where())

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()

    async def notebook_cell() -> tuple[str, str]:  # a running loop in this thread, as in Jupyter
        _var.set("cell")
        return run_sync(_where())

    results["running loop"] = asyncio.run(notebook_cell())
    assert results == {
        "script": ("textopt-loop", "main"),
        "thread": ("textopt-loop", "thread"),
        "running loop": ("textopt-loop", "cell"),
    }
    assert textopt_loop() is textopt_loop() and textopt_loop().is_running()


def test_sync_call_on_the_loop_thread_raises_instead_of_deadlocking():
    eng = to.ScriptedEngine("x")

    async def bad() -> str:
        return eng.complete(MSG).text  # sync call from code running on the textopt loop

    box: dict[str, BaseException] = {}

    def go() -> None:
        try:
            run_sync(bad())
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "run_sync deadlocked on the loop thread"
    assert isinstance(box["error"], LoopReentryError) and "await the async form" in str(box["error"])
    assert eng.calls == []
    assert run_sync(_where())[0] == "textopt-loop"  # the loop is still fine


def test_errors_and_system_exit_reach_the_caller_and_the_loop_survives():
    async def boom() -> None:
        raise KeyError("k")

    async def leave() -> None:
        raise SystemExit(3)

    with pytest.raises(KeyError):
        run_sync(boom())
    with pytest.raises(SystemExit):
        run_sync(leave())
    assert run_sync(_where())[0] == "textopt-loop"


def test_max_concurrency_holds_for_sync_calls_from_threads():
    eng = to.ScriptedEngine("x", latency=0.05, max_concurrency=1)
    threads = [threading.Thread(target=lambda i=i: eng.complete([{"role": "user", "content": f"q{i}"}])) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(eng.calls) == 4 and eng.max_in_flight == 1


def test_max_concurrency_holds_across_async_callers_on_different_loops():
    eng = to.ScriptedEngine("x", latency=0.05, max_concurrency=2)

    async def batch(tag: str) -> None:
        await asyncio.gather(*(eng.acomplete([{"role": "user", "content": f"{tag}{i}"}]) for i in range(4)))

    threads = [threading.Thread(target=lambda tag=tag: asyncio.run(batch(tag))) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(eng.calls) == 8 and eng.max_in_flight == 2


def test_sync_user_functions_in_worker_threads_share_the_limit():
    """The Trainer's pattern: async code runs sync user functions in threads, which call the engine sync."""
    eng = to.ScriptedEngine("x", latency=0.05, max_concurrency=1)
    llm = to.LLM(eng)

    def user_fn(i: int) -> str:
        return llm(to.Variable(f"question {i}", role="question")).value

    async def run() -> list[str]:
        return await asyncio.gather(*(asyncio.to_thread(user_fn, i) for i in range(4)))

    assert run_sync(run()) == ["x"] * 4
    assert eng.max_in_flight == 1


def test_blocking_engines_dont_deadlock_when_sync_callers_fill_the_loops_threads():
    """12 sync user functions in the loop's default executor wait for an engine whose provider work is
    blocking (as llama.cpp's is): that work must not queue behind them in the same executor."""

    class Blocking(to.ScriptedEngine):
        async def _acomplete(self, request):
            await self._in_worker(time.sleep, 0.01)
            return await super()._acomplete(request)

    eng = Blocking("x", max_concurrency=1)

    async def run() -> list[str]:
        return await asyncio.gather(*(asyncio.to_thread(lambda i=i: eng.complete([{"role": "user", "content": f"q{i}"}]).text)
                                      for i in range(12)))

    box: dict[str, list[str]] = {}
    t = threading.Thread(target=lambda: box.setdefault("out", run_sync(run())), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "deadlock: blocking provider work queued behind the callers waiting for it"
    assert box["out"] == ["x"] * 12


def test_identical_requests_in_flight_make_one_provider_call(tmp_path):
    eng = to.ScriptedEngine(lambda m: "reply to " + m[-1]["content"], latency=0.1, cache=DiskCache(tmp_path))

    async def many() -> list[to.Completion]:
        same = [eng.acomplete(MSG) for _ in range(5)]
        other = [eng.acomplete([{"role": "user", "content": "other"}])]
        return await asyncio.gather(*same, *other)

    out = asyncio.run(many())
    assert [c.text for c in out] == ["reply to q"] * 5 + ["reply to other"]
    assert len(eng.calls) == 2  # one per distinct request
    assert sorted(c.cached for c in out[:5]) == [False, True, True, True, True]
    assert eng.usage.calls == 2 and eng.usage.cached_calls == 4
    # sync callers in threads share a call just the same
    threads = [threading.Thread(target=lambda: eng.complete([{"role": "user", "content": "t"}])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(eng.calls) == 3


def test_when_the_first_of_identical_callers_is_cancelled_the_others_still_get_their_reply(tmp_path):
    """The first caller's cancellation cancels its call (as with the cache off); those waiting on it make
    the call themselves, once between them, instead of inheriting the cancellation."""
    eng = to.ScriptedEngine(lambda m: "reply to " + m[-1]["content"], latency=0.3, cache=DiskCache(tmp_path))

    async def scene() -> list[to.Completion]:
        first = asyncio.ensure_future(asyncio.wait_for(eng.acomplete(MSG), 0.1))
        await asyncio.sleep(0.02)
        others = [asyncio.ensure_future(eng.acomplete(MSG)) for _ in range(2)]
        with pytest.raises(asyncio.TimeoutError):
            await first
        return await asyncio.gather(*others)

    out = asyncio.run(scene())
    assert [c.text for c in out] == ["reply to q"] * 2
    assert len(eng.calls) == 2  # the cancelled one, and one for both waiters
    assert sorted(c.cached for c in out) == [False, True]


def test_with_the_cache_off_identical_requests_are_separate_samples():
    eng = to.ScriptedEngine("x", latency=0.05, cache=False)

    async def many() -> None:
        await asyncio.gather(*(eng.acomplete(MSG, temperature=0.7) for _ in range(3)))

    asyncio.run(many())
    assert len(eng.calls) == 3


def test_cancelling_an_async_caller_cancels_its_call_on_the_textopt_loop():
    eng = to.ScriptedEngine("x", latency=5.0)

    async def impatient() -> None:
        await asyncio.wait_for(eng.acomplete(MSG), 0.2)

    start = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(impatient())
    deadline = time.monotonic() + 2
    while eng._in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert eng._in_flight == 0 and time.perf_counter() - start < 2


def test_bursts_of_hand_overs_from_several_loops_each_get_their_own_reply():
    """Hand-overs to the textopt loop are batched per loop (one wake-up per burst): under load from four
    user loops at once, every caller still gets the reply to its own request, errors included."""
    def reply(messages):
        q = messages[-1]["content"]
        if q.endswith("7"):
            raise ValueError(f"no reply to {q}")
        return "re: " + q

    eng = to.ScriptedEngine(reply, cache=False, max_concurrency=64)
    results: dict[int, list[str]] = {}

    def user(n: int) -> None:
        async def burst() -> list[str]:
            async def one(i: int) -> str:
                try:
                    return (await eng.acomplete([{"role": "user", "content": f"{n}-{i}"}])).text
                except to.EngineError as exc:
                    return f"error: {exc}"
            return await asyncio.gather(*(one(i) for i in range(150)))
        results[n] = asyncio.run(burst())

    threads = [threading.Thread(target=user, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for n in range(4):
        for i, text in enumerate(results[n]):
            if str(i).endswith("7"):
                assert text.startswith("error:") and f"{n}-{i}" in text
            else:
                assert text == f"re: {n}-{i}"


def test_mailboxes_of_two_loops_posting_to_each_other_never_lose_a_wake_up():
    """Two loops drain their boxes at the same time in two threads (a tiny switch interval makes the GIL
    change hands inside a drain): every callback runs, none waits for a wake-up that was lost."""
    n = 400
    counts = {"a": 0, "b": 0}
    loops: dict[str, asyncio.AbstractEventLoop] = {}
    ready = threading.Barrier(3)
    done = {name: threading.Event() for name in "ab"}

    def bump(name: str) -> None:
        counts[name] += 1
        time.sleep(0.0002)  # let go of the GIL inside a drain, so the two loops drain at the same time
        if counts[name] == n:
            done[name].set()

    def side(me: str, other: str) -> None:
        loop = asyncio.new_event_loop()
        loops[me] = loop

        async def main() -> None:
            ready.wait()
            box = _mailbox(loops[other])
            for i in range(n):
                box.post(bump, other)
                if i % 20 == 0:
                    await asyncio.sleep(0)
            while not (done["a"].is_set() and done["b"].is_set()):
                await asyncio.sleep(0.01)

        loop.run_until_complete(asyncio.wait_for(main(), 10))
        loop.close()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=side, args=pair) for pair in (("a", "b"), ("b", "a"))]
        for t in threads:
            t.start()
        ready.wait()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(old)
    assert counts == {"a": n, "b": n}


def test_usage_trackers_count_calls_made_in_threads_and_on_other_loops():
    eng = to.ScriptedEngine("abcd")
    with to.track_usage() as usage:
        eng.complete(MSG)
        t = threading.Thread(target=lambda: eng.complete(MSG))  # a new thread starts with a fresh context
        t.start()
        t.join()
        asyncio.run(eng.acomplete(MSG))
    assert usage.calls == 2 and eng.usage.calls == 3
