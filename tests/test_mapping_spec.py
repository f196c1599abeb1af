"""A MappingSpec as a person writes it: readable errors, and ShareGPT roles in any case."""

from __future__ import annotations

import json

import pytest

from tunestep.server.cli import main as cli
from tunestep.tools.data.mapping import apply_mapping
from tunestep.tools.inspector import run_inspector


@pytest.mark.parametrize("text, says", [
    ('{"source_format": "shargpt"}', ["source_format:", "(got 'shargpt')",
                                      'e.g. "sharegpt"']),
    ('{"source_format": "sharegpt", "rolemap": {}}', ["rolemap: not a MappingSpec field",
                                                      "role_map"]),
    ('{"source_format": "sharegpt", "role_map": {"human": "usr"}}',
     ["role_map.human:", "(got 'usr')", '{"human": "user"']),
    ('{"source_format": "alpaca", "join_template": "no placeholder"}',
     ["join_template must contain {instruction}"]),
    ("{}", ["source_format: required"]),
    ('{"source_format": "alpaca",\n', ["not valid JSON", "line 1, column 27"]),
])
def test_a_bad_spec_names_the_field_what_is_wrong_and_an_example(sample_ws, capsys, tmp_path,
                                                                 text, says):
    spec = tmp_path / "spec.json"
    spec.write_text(text)
    code = cli(["map", "datasets/incremental/batch_100_02", "--spec", str(spec), "-w",
                str(sample_ws.root)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "mapping_spec_invalid" in err
    for words in says:
        assert words in err
    assert "pydantic" not in err and "https://" not in err and "Traceback" not in err


def test_sharegpt_roles_in_any_case_map_and_keep_every_row(sample_ws):
    rows = [{"conversations": [{"from": "System", "value": "You grade web code."},
                               {"from": "Human", "value": f"Grade page {i}."},
                               {"from": "GPT", "value": f"Grade: {i % 10}"}]}
            for i in range(6)]
    folder = sample_ws.root / "datasets/incremental/batch_100_04"
    folder.mkdir()
    (folder / "chats.json").write_text(json.dumps(rows))
    report = run_inspector(sample_ws, "datasets/incremental/batch_100_04")
    assert report.status == "NEEDS_MAPPING", report.errors
    spec = report.suggested_mapping
    assert spec.role_map == {"System": "system", "Human": "user", "GPT": "assistant"}
    assert report.mapping_preview.rows_out == 6
    result = apply_mapping(sample_ws, "datasets/incremental/batch_100_04", spec)
    assert result.rows_out == 6 and result.rows_dropped == 0
    mapped = sample_ws.resolve(result.files[0].output).read_text().splitlines()
    assert [m["role"] for m in json.loads(mapped[0])["messages"]] == \
        ["system", "user", "assistant"]
    # A spec written with the lower-case names reads them too, as ShareGPT loaders do.
    lower = spec.model_copy(update={"role_map": {"system": "system", "human": "user",
                                                 "gpt": "assistant"}})
    again = apply_mapping(sample_ws, "datasets/incremental/batch_100_04", lower)
    assert again.rows_out == 6


def test_over_mcp_a_bad_spec_reads_the_same_and_the_schema_is_mappingspec(sample_ws):
    import anyio
    from mcp import Client

    from tunestep.server.app import ServerConfig, build_server
    from tunestep.server.mcp_tools import error_code

    async def main():
        async with Client(build_server(ServerConfig(workspace=sample_ws.root))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            schema = tools["apply_mapping"].input_schema["properties"]["mapping"]
            spec = schema["anyOf"][0]
            assert spec["properties"]["source_format"]["enum"][0] == "chat"
            assert "$ref" not in json.dumps(schema)
            result = await client.call_tool("apply_mapping", {
                "source": "datasets/incremental/batch_100_02",
                "mapping": {"source_format": "shargpt"}})
            text = result.content[0].text
            assert error_code(result) == "mapping_spec_invalid"
            assert "source_format:" in text and 'e.g. "sharegpt"' in text
            assert "pydantic" not in text and "https://" not in text

    anyio.run(main)
