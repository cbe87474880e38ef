"""A version number outside ``1..Runtime.MAX_VERSION`` is refused before any query, on every
store and from every edge (the CLI shares the check through the runtime)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.runtime._support import QA, ready
from typer.testing import CliRunner

from dspex.cli import app
from dspex.errors import ValidationError
from dspex.runtime import Runtime

Call = Callable[[Runtime, int], Awaitable[Any]]

CALLS: dict[str, Call] = {
    "get_program": lambda rt, v: rt.get_program("qa", v),
    "load_program": lambda rt, v: rt.load_program("qa", v),
    "initialize": lambda rt, v: rt.initialize("qa", v),
    "archive": lambda rt, v: rt.archive("qa", v),
    "graph": lambda rt, v: rt.graph("qa", v),
    "execute": lambda rt, v: rt.execute("qa", {"question": "q?"}, version=v),
    "run_batch": lambda rt, v: rt.run_batch("qa", [{"question": "q?"}], version=v),
    "start_batch": lambda rt, v: rt.start_batch("qa", [{"question": "q?"}], version=v),
}


def test_the_largest_version_is_the_databases_32_bit_integer() -> None:
    assert Runtime.MAX_VERSION == 2**31 - 1


@pytest.mark.parametrize("version", [0, 2**31, 2**63])
@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_version_out_of_range_is_a_validation_error(
    runtime: Runtime, call: str, version: int
) -> None:
    await ready(runtime)
    with pytest.raises(ValidationError) as info:
        await CALLS[call](runtime, version)
    assert [e.code for e in info.value.errors] == ["version_out_of_range"]
    assert (await runtime.get_program("qa")).status == "ready"  # nothing changed


async def test_the_largest_version_is_looked_up_like_any_other(runtime: Runtime) -> None:
    from dspex.errors import NotFoundError

    await ready(runtime)
    with pytest.raises(NotFoundError):
        await runtime.get_program("qa", Runtime.MAX_VERSION)


@pytest.mark.parametrize(
    "args",
    [
        ["program", "show", "qa", "--version", "99999999999999999999"],
        ["program", "init", "qa", "--version", "2147483648"],
        ["run", "qa", "-i", "question=q?", "--version", "99999999999999999999"],
    ],
    ids=["show", "init", "run"],
)
def test_the_cli_refuses_a_version_out_of_range_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    for name in ("DSPEX_CONFIG", "DSPEX_DATABASE_URL", "DSPEX_DEFAULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(QA))
    runner = CliRunner()
    assert runner.invoke(app, ["program", "register", "qa.yaml", "--init"]).exit_code == 0
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "validation_error"
    assert error["errors"][0]["code"] == "version_out_of_range"
