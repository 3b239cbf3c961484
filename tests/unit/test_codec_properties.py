"""Every declared type survives both text forms, and decoding is as lenient as spec §2.3 says."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.strategies import for_type
from xenopsd.api import jsontext, marshal
from xenopsd.api.devices import (
    EmptyImpl,
    LocalNetwork,
    Static4,
    Vbd,
    VbdMode,
    VgpuImplementation,
    Vif,
)
from xenopsd.api.errors import (
    BadPowerState,
    ObserverError,
    UnknownError,
    XenopsError,
)
from xenopsd.api.methods import METHODS
from xenopsd.api.vm import Cirrus, HvmInfo, NvramUefiVariables, PowerState, Uefi, VideoCard
from xenopsd.rpc import xmltext


def _all_types() -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for m in METHODS.values():
        for p in m.params:
            seen.setdefault(repr(p.type), p.type)
        seen.setdefault(repr(m.result), m.result)
    seen["XenopsError"] = XenopsError
    seen["ObserverError"] = ObserverError
    return seen


TYPES = _all_types()


def _same(tp: Any, a: Any, b: Any) -> bool:
    """Errors are exceptions without value equality, so compare encodings."""
    return marshal.encode(tp, a) == marshal.encode(tp, b)


@pytest.mark.parametrize("name", sorted(TYPES))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_roundtrip_json_and_xml(name: str, data: st.DataObject) -> None:
    tp = TYPES[name]
    value = data.draw(for_type(tp))
    wire = marshal.encode(tp, value)
    from_json = marshal.decode(tp, jsontext.loads(jsontext.dumps(wire)))
    assert _same(tp, from_json, value)
    xml = xmltext.value(wire)
    from_xml = marshal.decode(tp, xmltext.parse_value_text(xml))
    assert _same(tp, from_xml, value)


@given(st.floats(allow_nan=True))
def test_json_floats_read_back_exactly(x: float) -> None:
    text = jsontext.dumps(x)
    back = jsontext.loads(text)
    assert (math.isnan(back) and math.isnan(x)) or back == x
    assert "." in text or "e" in text or text in ("NaN", "Infinity", "-Infinity")


def test_float_texts_match_ocaml_rpc() -> None:
    assert [jsontext.dumps(x) for x in (30.0, 0.25, 1e20, 1200.0, 0.1)] == [
        "30.0",
        "0.25",
        "1e+20",
        "1200.0",
        "0.1",
    ]
    assert xmltext.value(1200.0) == "<value><double>1200</double></value>"
    assert xmltext.value(1e-05) == "<value><double>1e-05</double></value>"


def test_record_keys_case_insensitive_first_wins_unknown_ignored() -> None:
    vbd = marshal.decode(Vbd, {"MODE": "ReadOnly", "mode": "ReadWrite", "surprise": 1})
    assert vbd.mode is VbdMode.ReadOnly
    assert jsontext.loads('{"a":1,"a":2}') == {"a": 1}


def test_defaults_for_missing_or_undecodable_fields() -> None:
    vif = marshal.decode(Vif, {"mtu": "not a number", "mac": 42})
    assert vif.mtu == 1500 and vif.mac == "fe:ff:ff:ff:ff:ff"
    assert vif.backend == LocalNetwork("xenbr0")
    assert marshal.decode(HvmInfo, {}).video == Cirrus()


def test_null_in_an_option_field_is_an_error() -> None:
    with pytest.raises(marshal.MarshalError):
        marshal.decode(Vbd, {"backend": None})


def test_variants_by_name_array_and_null_payload() -> None:
    assert marshal.decode(PowerState, "running") is PowerState.Running
    assert marshal.decode(PowerState, ["Halted", None]) is PowerState.Halted
    assert marshal.decode(PowerState, ["Halted"]) is PowerState.Halted
    assert marshal.decode(VideoCard, ["cirrus", None]) == Cirrus()
    assert marshal.decode(VideoCard, "Something_new") == Cirrus()
    assert marshal.decode(VgpuImplementation, ["Future", {}]) == EmptyImpl()
    assert isinstance(marshal.decode(XenopsError, ["Brand_new_error", "x"]), UnknownError)
    assert marshal.decode(Uefi.variant_base(), ["Uefi", {}]) == Uefi(NvramUefiVariables())
    with pytest.raises(marshal.MarshalError):
        marshal.decode(PowerState, "Exploded")


def test_ints_accept_ocaml_integer_strings_and_reject_floats() -> None:
    int_t = METHODS["HOST.set_worker_pool_size"].params[1].type
    assert [marshal.decode(int_t, s) for s in ("41", "0x1f", "0o17", "0b101", "1_000", "-5")] == [
        41,
        31,
        15,
        5,
        1000,
        -5,
    ]
    for bad in (30.0, "4.5", "", "abc", True, 2**63):
        with pytest.raises(marshal.MarshalError):
            marshal.decode(int_t, bad)


def test_floats_accept_ints_and_strings() -> None:
    assert marshal.decode(float, 3) == 3.0
    assert marshal.decode(float, "2.5") == 2.5
    with pytest.raises(marshal.MarshalError):
        marshal.decode(float, "fast")


def test_options_outside_records_and_tuples() -> None:
    assert marshal.encode(Static4.variant_base(), Static4(["10.0.0.5/24"], None)) == [
        "Static4",
        [["10.0.0.5/24"], []],
    ]
    assert marshal.decode(Static4.variant_base(), ["Static4", [["a"], ["gw"]]]) == Static4(
        ["a"], "gw"
    )
    with pytest.raises(marshal.MarshalError):
        marshal.decode(Static4.variant_base(), ["Static4", [["a"]]])


def test_error_payloads() -> None:
    err = BadPowerState(PowerState.Running, PowerState.Halted)
    assert marshal.encode(XenopsError, err) == ["Bad_power_state", ["Running", "Halted"]]
    back = marshal.decode(XenopsError, ["bad_power_state", ["Running", "Halted"]])
    assert isinstance(back, BadPowerState) and back.expected is PowerState.Halted


def test_control_characters_survive_json_and_are_dropped_by_xml() -> None:
    text = "a\x01b\tc\x1fd"
    assert jsontext.loads(jsontext.dumps(text)) == text
    assert xmltext.value(text) == "<value>ab\tcd</value>"
