"""``dspex batch`` and ``dspex evaluate`` tune their own process for the program they run
(fresh processes).

The programs report the GIL switch interval of the process running them: a ``dspy`` module
without a backend (it calls a ``dspy.LM``, so the command keeps Python's 5 ms) and a ``python``
module (no ``dspy.LM``: the command's 1 ms stays).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml
from cli_support import dspex_process

PROBE = textwrap.dedent(
    """
    import sys

    import dspy


    class Probe(dspy.Module):
        def forward(self, question: str) -> dspy.Prediction:
            return dspy.Prediction(answer=repr(sys.getswitchinterval()))


    def probe(question: str) -> dict[str, str]:
        return {"answer": repr(sys.getswitchinterval())}
    """
)


def _program(name: str, module: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "signature": "question: str -> answer: str",
        "modules": {"probe": {**module, "signature": "question: str -> answer: str"}},
    }


def _register(tmp_path: Path, program: dict[str, Any]) -> None:
    (tmp_path / "probe_modules.py").write_text(PROBE)
    (tmp_path / "dspex.toml").write_text('allowed_imports = ["probe_modules"]\n')
    (tmp_path / "program.yaml").write_text(yaml.safe_dump(program))
    registered = dspex_process(
        "program", "register", "program.yaml", "--init", cwd=tmp_path, path=tmp_path
    )
    assert registered.returncode == 0, registered.stderr


def _interval_in_batch(tmp_path: Path, program: dict[str, Any]) -> float:
    _register(tmp_path, program)
    (tmp_path / "in.jsonl").write_text('{"question": "which interval?"}\n')
    ran = dspex_process(
        "batch", program["name"], "in.jsonl", "--out", "out.jsonl", cwd=tmp_path, path=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    (line,) = (tmp_path / "out.jsonl").read_text().splitlines()
    result = json.loads(line)
    assert result["status"] == "completed", result
    return float(result["outputs"]["answer"])


def test_a_batch_of_a_program_calling_a_dspy_lm_runs_with_pythons_switch_interval(
    tmp_path: Path,
) -> None:
    program = _program("dspy_probe", {"kind": "dspy", "module": "probe_modules:Probe"})
    assert _interval_in_batch(tmp_path, program) == 0.005


def test_a_batch_of_a_program_without_a_dspy_lm_keeps_the_commands_short_interval(
    tmp_path: Path,
) -> None:
    program = _program("python_probe", {"kind": "python", "function": "probe_modules:probe"})
    assert _interval_in_batch(tmp_path, program) == 0.001


def test_an_evaluation_of_a_program_calling_a_dspy_lm_runs_with_pythons_switch_interval(
    tmp_path: Path,
) -> None:
    _register(tmp_path, _program("dspy_probe", {"kind": "dspy", "module": "probe_modules:Probe"}))
    # the answer is the interval the module saw: it matches the label only at 5 ms
    (tmp_path / "dev.jsonl").write_text('{"question": "which interval?", "answer": "0.005"}\n')
    ran = dspex_process(
        "evaluate",
        "dspy_probe",
        "dev.jsonl",
        "--metric",
        "answer_exact_match",
        "--json",
        cwd=tmp_path,
        path=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["score"] == 1.0
