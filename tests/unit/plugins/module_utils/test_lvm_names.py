"""LVM names and the tag codec: what may reach an LVM command line, and records held in tags."""

from __future__ import annotations

import random
from typing import Any, List

import pytest
from lvm_testlib import (
    VG,
    MiB,
    stderr_of,
)

from basalt_core import lvm
from basalt_core.errors import (
    InvalidRequest,
    Precondition,
)

# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vol-1", "a", "A.b+c_d-e", "lvol0", "mysnapshot", "x_tdat", "pvc-" + "a" * 100,
                                  "_hidden", "+plus", ".dot"])
def test_valid_lv_names(name: str) -> None:
    assert lvm.check_lv_name(name, VG) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "invalid"), ("-a", "invalid"), (".", "invalid"), ("..", "invalid"), ("a b", "invalid"),
        ("a/b", "invalid"), ("é", "invalid"), ("a\n", "invalid"), ("a" * 128, "invalid"),
        ("snapshot", "starts with 'snapshot'"), ("snapshot1", "starts with 'snapshot'"),
        ("pvmove0", "starts with 'pvmove'"),
        ("x_tmeta", "contains '_tmeta'"), ("x_tdata1", "contains '_tdata'"), ("a_mlog", "contains '_mlog'"),
        ("a_mimage_0", "contains '_mimage'"), ("a_rimage", "contains '_rimage'"), ("a_rmeta", "contains '_rmeta'"),
        ("a_cdata", "contains '_cdata'"), ("a_cmeta", "contains '_cmeta'"), ("a_corig", "contains '_corig'"),
        ("a_cpool", "contains '_cpool'"), ("a_cvol", "contains '_cvol'"), ("a_imeta", "contains '_imeta'"),
        ("a_iorig", "contains '_iorig'"), ("a_pmspare", "contains '_pmspare'"), ("a_vdata", "contains '_vdata'"),
        ("a_vorigin", "contains '_vorigin'"), ("a_wcorig", "contains '_wcorig'"),
        ("c" * 122, "too long"),  # "basalt-rec/" + 122 = 133 > 125; LVM: "length 133 is not supported"
    ],
)
def test_invalid_lv_names_are_refused_before_running_anything(lvm_script: Any, name: str, reason: str) -> None:
    lvm_script([])
    with pytest.raises(InvalidRequest, match=reason.replace("(", r"\(")):
        lvm.create_linear(VG, name, MiB)


def test_full_name_limit_is_vg_plus_lv() -> None:
    assert lvm.check_lv_name("c" * 121, "bvg")  # "bvg/" + 121 = 125: LVM took it
    with pytest.raises(InvalidRequest, match="too long"):
        lvm.check_lv_name("c" * 122, "bvg")  # 126: "length 126 is not supported"
    assert lvm.check_lv_name("c" * 110, "basalt-test-vg")
    with pytest.raises(InvalidRequest, match="too long"):
        lvm.check_lv_name("c" * 111, "basalt-test-vg")
    assert lvm.check_lv_name("c" * 127) == "c" * 127  # no VG given: the name alone


def test_reserved_name_is_what_lvm_refuses() -> None:
    assert 'Names including "_tmeta" are reserved' in stderr_of("err_lvcreate_reserved")
    with pytest.raises(InvalidRequest):
        lvm.check_lv_name("x_tmeta")


@pytest.mark.parametrize("vg", ["", "-vg", ".", "..", "v g", "v/g", "x" * 128])
def test_invalid_vg_names(lvm_script: Any, vg: str) -> None:
    lvm_script([])
    with pytest.raises(InvalidRequest, match="volume group name"):
        lvm.volume_group(vg)


@pytest.mark.parametrize("name", ["-x", "a/b", "", "x;y"])
def test_lookups_refuse_names_that_are_not_lvm_names(lvm_script: Any, name: str) -> None:
    lvm_script([])
    with pytest.raises(InvalidRequest):
        lvm.logical_volume(VG, name)
    with pytest.raises(InvalidRequest):
        lvm.remove(VG, name)


# -- tags -------------------------------------------------------------------------------

TAG_ALPHABET = "ABCXYZabcxyz0189_+.-/=!:#&"


def test_tag_alphabet_is_what_lvm_took() -> None:
    for tag in ["odd/=!:#&+.-_x", TAG_ALPHABET, "k=v", "a" * 128, "-leading"]:
        assert lvm.check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "a b", "a,b", "a@b", "a~b", "a%b", "a*b", "a$b", "a|b", 'a"b', "a'b", "é",
                                 "a\nb", "a" * 129])
def test_tags_outside_the_alphabet_are_refused(lvm_script: Any, tag: str) -> None:
    lvm_script([])
    with pytest.raises(InvalidRequest, match="tag"):
        lvm.add_tags(VG, "vol-1", [tag])
    with pytest.raises(InvalidRequest, match="tag"):
        lvm.logical_volumes(VG, tag)


def test_tag_selection_is_quoted() -> None:
    # Unquoted, '#' starts a comment and '&', '|', '!' are operators in --select.
    assert lvm.tag_selection("h#1") == 'lv_tags={"h#1"}'


NAMES = [
    "",
    "pvc-0a1b2c3d-4e5f-6789-abcd-ef0123456789",
    "snap-ü-1",
    "é" * 64,  # 128 bytes of UTF-8
    "名" * 42 + "ab",  # 128 bytes
    "😀" * 32,  # 128 bytes, 4-byte characters
    "".join(chr(c) for c in range(1, 128)),  # every ASCII character but NUL
    " leading and trailing ",
    "a,b;c|d&e#f!g@h$i%j^k*l(m)n[o]p{q}r<s>t?u\"v'w`x~y\\z\n\t",
    "x" * 1000,
]


@pytest.mark.parametrize("text", NAMES, ids=range(len(NAMES)))
def test_tag_value_round_trip(text: str) -> None:
    tags = lvm.encode_tag_value("basalt.name", text)
    assert all(lvm.check_tag(tag) and len(tag) <= 128 for tag in tags)
    assert all(tag.startswith("basalt.name:") for tag in tags)
    mixed = [*tags, "basalt.managed", "basalt.name2:0/1=eA", "basalt.names:0/1=eA", "other"]
    random.Random(7).shuffle(mixed)
    assert lvm.decode_tag_value(mixed, "basalt.name") == text
    assert lvm.decode_tag_value(sorted(mixed), "basalt.name") == text  # LVM reports tags sorted


def test_a_128_byte_name_takes_two_tags() -> None:
    tags = lvm.encode_tag_value("basalt.name", "é" * 64)
    assert [tag[:16] for tag in tags] == ["basalt.name:0/2=", "basalt.name:1/2="]


def test_many_chunks_keep_within_128() -> None:
    tags = lvm.encode_tag_value("k", "x" * 3000)
    assert len(tags) > 10 and max(len(t) for t in tags) <= 128
    assert lvm.decode_tag_value(sorted(tags), "k") == "x" * 3000


def test_absent_key_decodes_to_none() -> None:
    assert lvm.decode_tag_value(["basalt.managed", "basalt.name2:0/1=eA"], "basalt.name") is None
    assert lvm.decode_tag_value([], "basalt.name") is None


@pytest.mark.parametrize(
    "tags",
    [
        ["k:0/2=eA"],  # missing chunk
        ["k:0/1=eA", "k:0/1=eQ"],  # repeated chunk
        ["k:0/2=eA", "k:1/3=eA"],  # counts disagree
        ["k:1/2=eA", "k:2/2=eA"],  # wrong indices
        ["k:0/1=_w"],  # not UTF-8
        ["k:0/1=e"],  # truncated base64
    ],
)
def test_inconsistent_tags_are_a_precondition_failure(tags: List[str]) -> None:
    with pytest.raises(Precondition):
        lvm.decode_tag_value(tags, "k")


@pytest.mark.parametrize("key", ["", "-k", "a:b", "a=b", "a/b", "k" * 65, "é"])
def test_bad_tag_keys(key: str) -> None:
    with pytest.raises(InvalidRequest, match="tag key"):
        lvm.encode_tag_value(key, "x")


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        lvm.encode_tag_value("k", "\udc80")
