"""The library leaves its host's interpreter as it found it; processes dspex owns tune themselves.

``import dspex``, a :class:`~dspex.Runtime` and ``run_batch`` (in one process and with worker
processes) change no collector setting, frozen object, switch interval, signal handler or
``multiprocessing`` global of the process they run in. Each check runs in a fresh interpreter,
so that nothing else a test session did is mistaken for dspex's doing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

HOST = textwrap.dedent(
    """
    import asyncio, gc, json, multiprocessing, signal, sys

    def snapshot():
        return {
            "threshold": list(gc.get_threshold()),
            "frozen": gc.get_freeze_count(),
            "switch_interval": sys.getswitchinterval(),
            "start_method": multiprocessing.get_start_method(allow_none=True),
            "forkserver_imported": "multiprocessing.forkserver" in sys.modules,
            "sigint": id(signal.getsignal(signal.SIGINT)),
            "sigterm": id(signal.getsignal(signal.SIGTERM)),
        }

    QA = {
        "name": "qa",
        "signature": "question: str -> answer: str",
        "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
    }
    seen = {"before": snapshot()}
    import dspex
    seen["imported"] = snapshot()

    async def main():
        seen["in asyncio.run"] = snapshot()  # which installs its own SIGINT handler
        async with dspex.Runtime.open(sys.argv[1]) as rt:
            seen["opened"] = snapshot()
            await rt.register(QA)
            await rt.initialize("qa")
            for workers in (1, 2):
                during = []
                result = await rt.run_batch(
                    "qa",
                    [{"question": f"q{i}"} for i in range(300)],
                    workers=workers,
                    on_progress=lambda event: during.append(snapshot()),
                )
                assert result.stats.completed == 300, result.stats
                seen[f"during {workers}"] = during[len(during) // 2]
                seen[f"after {workers}"] = snapshot()
        seen["closed"] = snapshot()

    asyncio.run(main())
    seen["done"] = snapshot()
    print(json.dumps(seen))
    """
)


@pytest.mark.slow
def test_run_batch_leaves_the_host_interpreter_as_it_found_it(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", HOST, f"sqlite:///{tmp_path / 'dspex.db'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    seen: dict[str, dict[str, Any]] = json.loads(out.stdout)
    before = seen.pop("before")
    assert before["forkserver_imported"] is False
    assert seen.pop("imported") == before
    assert seen.pop("done") == before
    in_loop = seen.pop("in asyncio.run")
    assert in_loop == {**before, "sigint": in_loop["sigint"]}
    assert set(seen) == {"opened", "during 1", "after 1", "during 2", "after 2", "closed"}
    for moment, state in seen.items():
        assert state == in_loop, moment


TUNED = textwrap.dedent(
    """
    import gc, json, sys
    gc.set_threshold(*[int(x) for x in sys.argv[1:4]])
    if sys.argv[4] != "-":
        sys.setswitchinterval(float(sys.argv[4]))
    import dspex
    for call in sys.argv[5:]:  # "plain" or "dspy_lm", in order
        dspex.tune_process(dspy_lm=call == "dspy_lm")
    print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                      "switch": sys.getswitchinterval()}))
    """
)


def _tuned(
    *threshold: int, switch: float | None = None, calls: tuple[str, ...] = ("plain",)
) -> dict[str, Any]:
    given = "-" if switch is None else repr(switch)
    out = subprocess.run(
        [sys.executable, "-c", TUNED, *map(str, threshold), given, *calls],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_process_that_opts_in_gets_rare_young_collections_and_a_frozen_heap() -> None:
    tuned = _tuned(700, 10, 10)
    assert tuned["threshold"] == [50_000, 20, 20]
    assert tuned["frozen"] > 1000
    assert tuned["switch"] == 0.001


def test_opting_in_keeps_a_larger_young_threshold_the_process_already_chose() -> None:
    assert _tuned(200_000, 30, 40)["threshold"] == [200_000, 30, 40]


def test_a_process_tuned_for_dspy_lm_keeps_pythons_switch_interval() -> None:
    tuned = _tuned(700, 10, 10, calls=("dspy_lm",))
    assert tuned["switch"] == 0.005
    assert tuned["threshold"] == [50_000, 20, 20]
    assert tuned["frozen"] > 1000


def test_tuning_for_dspy_lm_puts_back_the_interval_an_earlier_tuning_shortened() -> None:
    assert _tuned(700, 10, 10, calls=("plain", "dspy_lm"))["switch"] == 0.005
    assert _tuned(700, 10, 10, switch=0.002, calls=("plain", "dspy_lm"))["switch"] == 0.002
    # tuned for dspy.LM and then plainly again: the plain tuning shortens it once more
    assert _tuned(700, 10, 10, calls=("dspy_lm", "plain"))["switch"] == 0.001


def test_an_interval_the_process_chose_itself_is_never_lengthened() -> None:
    assert _tuned(700, 10, 10, switch=0.0005, calls=("plain", "dspy_lm"))["switch"] == 0.0005
    assert _tuned(700, 10, 10, switch=0.0005, calls=("dspy_lm",))["switch"] == 0.0005
    assert _tuned(700, 10, 10, switch=0.02, calls=("dspy_lm",))["switch"] == 0.02
