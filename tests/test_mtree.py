"""The .mtree parser (design section 5): plain strings in, nodes or MtreeError out; no disk."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.tree import mtree

# design section 5, copied exactly (tabs included).
DESIGN_EXAMPLE = (
    "/set type=dir uname=deploy gname=deploy mode=0755\n"
    ".\n"
    "\tdb uname=user\n"
    "\t\tproduction.sqlite3 type=file uname=user mode=0640\n"
    "\t\t..\n"
    "\t..\n"
    "\tconfig\n"
    "\t\tdatabase.yml type=file gname=user mode=0640\n"
    "\t\t..\n"
    "\t..\n"
    "\tlog\n"
    "\t\tproduction.log type=file gname=user mode=0660\n"
    "\t\t..\n"
    "\t..\n"
    "\ttmp uname=user gname=user\n"
    "\t..\n"
    "..\n"
)

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# What `mtree -c` prints (FreeBSD layout): a header, /set lines, `# ./dir` comments,
# files before subdirectories, each directory closed by `..`, long lines continued.
STANDARD = f"""\
#	   user: root
#	machine: build
#	   tree: /srv/app/shared
#	   date: Tue Mar  5 10:00:00 2024

# .
/set type=file uid=0 gid=0 mode=0644 nlink=1 flags=none
.               type=dir mode=0755 nlink=4 time=1709632800.000000000
    config.yml  size=120 time=1709632800.000000000 \\
                sha256digest={SHA256_EMPTY}
    current     type=link mode=0755 link=releases/v1 time=1709632800.000000000

# ./cache
/set type=file uid=0 gid=0 mode=0640 nlink=1 flags=none
cache           type=dir mode=0750 nlink=2 time=1709632800.000000000
    data.db     size=4096 time=1709632800.000000000 \\
                sha256digest={SHA256_EMPTY}
# ./cache
..


# ./logs
logs            type=dir uid=33 gid=33 nlink=2 time=1709632800.000000000
    app.log     size=0 time=1709632800.000000000 sha256digest={SHA256_EMPTY}
# ./logs
..

..
"""


def parse_one(text: str) -> mtree.Node:
    """The only node a spec gives."""
    nodes = mtree.parse(text)
    assert len(nodes) == 1, nodes
    return nodes[0]


def by_path(text: str) -> dict[str, mtree.Node]:
    return {node.path: node for node in mtree.parse(text)}


def error(text: str) -> mtree.MtreeError:
    with pytest.raises(mtree.MtreeError) as caught:
        mtree.parse(text)
    return caught.value


def summary(nodes: list[mtree.Node]) -> list[tuple[str, str, str | None, str | None, int | None]]:
    return [(n.path, n.type, n.uname, n.gname, n.mode) for n in nodes]


# The two examples


def test_the_design_example_parses_to_exactly_the_described_nodes() -> None:
    assert summary(mtree.parse(DESIGN_EXAMPLE)) == [
        ("", "dir", "deploy", "deploy", 0o755),
        ("db", "dir", "user", "deploy", 0o755),
        ("db/production.sqlite3", "file", "user", "deploy", 0o640),
        ("config", "dir", "deploy", "deploy", 0o755),
        ("config/database.yml", "file", "deploy", "user", 0o640),
        ("log", "dir", "deploy", "deploy", 0o755),
        ("log/production.log", "file", "deploy", "user", 0o660),
        ("tmp", "dir", "user", "user", 0o755),
    ]


def test_the_design_example_has_the_three_files_and_tmp_as_leaves() -> None:
    leaves = mtree.leaves(mtree.parse(DESIGN_EXAMPLE))
    assert [leaf.path for leaf in leaves] == [
        "db/production.sqlite3", "config/database.yml", "log/production.log", "tmp",
    ]


def test_the_design_example_nodes_carry_their_line_numbers() -> None:
    lines = {node.path: node.line for node in mtree.parse(DESIGN_EXAMPLE)}
    assert lines == {"": 2, "db": 3, "db/production.sqlite3": 4, "config": 7, "config/database.yml": 8,
                     "log": 11, "log/production.log": 12, "tmp": 15}


def test_a_spec_as_mtree_c_prints_it_nests_files_under_their_directories() -> None:
    nodes = mtree.parse(STANDARD)
    assert [(n.path, n.type, n.uid, n.gid, n.mode) for n in nodes] == [
        ("", "dir", 0, 0, 0o755),
        ("config.yml", "file", 0, 0, 0o644),
        ("current", "link", 0, 0, 0o755),
        ("cache", "dir", 0, 0, 0o750),
        ("cache/data.db", "file", 0, 0, 0o640),
        ("logs", "dir", 33, 33, 0o640),
        ("logs/app.log", "file", 0, 0, 0o640),
    ]
    assert by_path(STANDARD)["current"].link == "releases/v1"
    assert [n.line for n in nodes] == [8, 9, 11, 15, 16, 23, 24]


def test_a_spec_as_mtree_c_prints_it_has_its_files_and_link_as_leaves() -> None:
    leaves = mtree.leaves(mtree.parse(STANDARD))
    assert [leaf.path for leaf in leaves] == ["config.yml", "current", "cache/data.db", "logs/app.log"]


def test_a_spec_without_a_root_entry_puts_names_at_the_root() -> None:
    nodes = mtree.parse("a type=dir\n  b type=file\n..\nc type=file\n")
    assert [(n.path, n.type) for n in nodes] == [("a", "dir"), ("a/b", "file"), ("c", "file")]


def test_an_empty_spec_gives_no_nodes() -> None:
    assert mtree.parse("") == []
    assert mtree.parse("\n# only a comment\n\n") == []


def test_a_directory_without_children_is_a_leaf_and_one_with_children_is_not() -> None:
    nodes = mtree.parse("a type=dir\n  b type=dir\n  ..\n..\nc type=dir\n..\n")
    assert [leaf.path for leaf in mtree.leaves(nodes)] == ["a/b", "c"]


# Keywords


def test_type_dir_opens_a_level_that_dotdot_closes() -> None:
    nodes = by_path(". type=dir\nd type=dir\nf type=file\n..\ng type=file\n..\n")
    assert nodes["d"].type == "dir"
    assert set(nodes) == {"", "d", "d/f", "g"}


def test_type_file_is_the_default_type() -> None:
    assert parse_one("f\n").type == "file"
    assert parse_one("f type=file\n").type == "file"


def test_type_link_keeps_its_target() -> None:
    node = parse_one("current type=link link=releases/v1\n")
    assert (node.type, node.link) == ("link", "releases/v1")


def test_a_link_target_is_decoded_like_a_name() -> None:
    assert parse_one("l type=link link=my\\040target\n").link == "my target"


def test_uname_is_kept_as_a_name() -> None:
    assert parse_one("f uname=deploy\n").uname == "deploy"


def test_gname_is_kept_as_a_name() -> None:
    assert parse_one("f gname=www-data\n").gname == "www-data"


def test_uid_is_a_decimal_number() -> None:
    assert parse_one("f uid=1000\n").uid == 1000


def test_gid_is_a_decimal_number() -> None:
    assert parse_one("f gid=010\n").gid == 10


def test_mode_is_octal_with_or_without_a_leading_zero() -> None:
    assert parse_one("f mode=0750\n").mode == 0o750
    assert parse_one("f mode=640\n").mode == 0o640


def test_mode_may_set_the_sticky_bit() -> None:
    assert parse_one("d type=dir mode=1777\n").mode == 0o1777


def test_an_entry_without_keywords_has_no_owner_and_no_mode() -> None:
    node = parse_one("f\n")
    assert (node.uname, node.gname, node.uid, node.gid, node.mode, node.link) == (None,) * 6
    assert (node.nochange, node.optional) == (False, False)


def test_nochange_is_a_flag() -> None:
    assert parse_one("f nochange\n").nochange is True


def test_optional_is_a_flag() -> None:
    assert parse_one("f optional\n").optional is True


def test_tags_are_accepted_and_ignored() -> None:
    assert parse_one("f tags=package,config\n") == parse_one("f\n")


@pytest.mark.parametrize("word", [
    "size=4096", "time=1709632800.000000000", "md5=d41d8cd98f00b204e9800998ecf8427e",
    "md5digest=d41d8cd98f00b204e9800998ecf8427e", "sha1digest=da39a3ee5e6b4b0d3255bfef95601890afd80709",
    f"sha256digest={SHA256_EMPTY}", f"sha256={SHA256_EMPTY}", "sha384digest=38b0", "sha512digest=cf83e135",
    "rmd160digest=9c1185a5", "ripemd160digest=9c1185a5", "cksum=4294967295", "flags=uchg,nodump",
    "flags=none", "nlink=2", "ignore", "ignore=", "device=0x0801", "resdevice=0x0801", "inode=1234",
    "contents=build/app.conf",
])
def test_each_ignored_standard_keyword_is_accepted(word: str) -> None:
    assert parse_one(f"f {word}\n") == parse_one("f\n")


# /set, /unset, comments, continuations


def test_a_set_line_gives_defaults_to_later_entries() -> None:
    nodes = by_path("before\n/set uname=deploy mode=0600\nafter\n")
    assert (nodes["before"].uname, nodes["before"].mode) == (None, None)
    assert (nodes["after"].uname, nodes["after"].mode) == ("deploy", 0o600)


def test_an_entry_keyword_overrides_a_set_default() -> None:
    assert parse_one("/set mode=0600 uname=deploy\nf mode=0644\n").mode == 0o644


def test_a_second_set_line_adds_to_and_overrides_the_first() -> None:
    node = parse_one("/set mode=0600 uname=deploy\n/set mode=0640 gname=web\nf\n")
    assert (node.mode, node.uname, node.gname) == (0o640, "deploy", "web")


def test_an_unset_line_removes_the_named_defaults() -> None:
    node = parse_one("/set mode=0600 uname=deploy gname=web\n/unset mode uname\nf\n")
    assert (node.mode, node.uname, node.gname) == (None, None, "web")


def test_unset_all_removes_every_default() -> None:
    node = parse_one("/set type=dir mode=0600 uname=deploy nochange\n/unset all\nf\n")
    assert (node.type, node.mode, node.uname, node.nochange) == ("file", None, None, False)


def test_unsetting_a_keyword_that_was_never_set_is_harmless() -> None:
    assert parse_one("/unset mode\nf\n").mode is None


def test_comment_lines_are_ignored_even_when_indented() -> None:
    assert [n.path for n in mtree.parse("# a comment\n\t# another\n    #x type=char\nf\n")] == ["f"]


def test_blank_and_whitespace_only_lines_are_ignored() -> None:
    assert [n.path for n in mtree.parse("\n   \n\t\nf\n\n")] == ["f"]


def test_a_trailing_backslash_continues_the_line() -> None:
    node = parse_one("/set type=file \\\n    uid=0\nf mode=0600 \\\n  gid=5 \\\n  uname=deploy\n")
    assert (node.uid, node.gid, node.mode, node.uname, node.line) == (0, 5, 0o600, "deploy", 3)


def test_a_continued_line_at_the_end_of_the_text_still_counts() -> None:
    assert parse_one("f mode=0600 \\\n").mode == 0o600


def test_windows_line_endings_are_read_like_unix_ones() -> None:
    nodes = mtree.parse("d type=dir \\\r\n mode=0700\r\n  f\r\n  ..\r\n")
    assert [(n.path, n.mode) for n in nodes] == [("d", 0o700), ("d/f", None)]


def test_a_comment_ending_with_a_backslash_does_not_swallow_the_next_line() -> None:
    assert [n.path for n in mtree.parse("# see below \\\nf\n")] == ["f"]


def test_an_escaped_backslash_before_a_continuation_backslash_ends_the_name() -> None:
    node = parse_one("name\\\\\\\n  mode=0600\n")
    assert (node.path, node.mode) == ("name\\", 0o600)


def test_an_octal_escape_in_a_name_is_decoded() -> None:
    assert parse_one("my\\040file\n").path == "my file"


def test_a_double_backslash_in_a_name_is_one_backslash() -> None:
    assert parse_one("back\\\\slash\n").path == "back\\slash"


def test_a_name_ending_with_an_escaped_backslash_does_not_continue_the_line() -> None:
    nodes = mtree.parse("name\\\\\nother\n")
    assert [n.path for n in nodes] == ["name\\", "other"]


def test_escapes_let_a_name_start_with_a_hash_or_hold_a_tab() -> None:
    assert [n.path for n in mtree.parse("\\043hash\ntab\\011bed\n")] == ["#hash", "tab\tbed"]


def test_escaped_utf8_bytes_make_one_character() -> None:
    assert parse_one("caf\\303\\251\n").path == "café"


def test_raw_non_ascii_names_are_kept_as_they_are() -> None:
    assert parse_one("café\n").path == "café"
    assert parse_one("Ã©\n").path == "Ã©"  # not read as the UTF-8 bytes of "é"
    assert parse_one("café\\040menu\n").path == "café menu"


def test_an_escaped_byte_that_is_not_utf8_is_kept_as_that_byte() -> None:
    assert os.fsencode(parse_one("bad\\377name\n").path) == b"bad\xffname"


def test_a_name_with_slashes_is_a_full_path_that_opens_no_level() -> None:
    nodes = mtree.parse("a/b/c type=dir\nd type=file\n")
    assert [n.path for n in nodes] == ["a/b/c", "d"]


def test_a_full_path_is_relative_to_the_root_even_inside_a_directory() -> None:
    nodes = mtree.parse(". type=dir\nsub type=dir\nx/y type=file\nz type=file\n..\n..\n")
    assert [n.path for n in nodes] == ["", "sub", "x/y", "sub/z"]


def test_a_leading_dot_slash_and_repeated_slashes_are_dropped_from_full_paths() -> None:
    assert [n.path for n in mtree.parse("./a//b type=file\n./c/./d type=file\n")] == ["a/b", "c/d"]


def test_declaring_an_entry_again_with_the_same_type_keeps_the_later_keywords() -> None:
    nodes = mtree.parse("a/b mode=0600\na/b mode=0640\n")
    assert [(n.path, n.mode) for n in nodes] == [("a/b", 0o640)]


def test_the_every_entry_closes_convention_nests_like_the_standard_one() -> None:
    puppet = "/set type=file\n. type=dir\n\tf\n\t..\n\td type=dir\n\t\tg\n\t\t..\n\t..\n..\n"
    standard = "/set type=file\n. type=dir\n\tf\n\td type=dir\n\t\tg\n\t..\n..\n"
    assert summary(mtree.parse(puppet)) == summary(mtree.parse(standard))
    assert [n.path for n in mtree.parse(puppet)] == ["", "f", "d", "d/g"]


# Errors, with the line they name


def test_an_error_message_starts_with_the_line_number() -> None:
    assert str(error("ok\nf colour=red\n")).startswith(".mtree line 2: ")


def test_an_unknown_keyword_is_refused_at_its_line() -> None:
    err = error("# header\n/set mode=0644\n\nf type=file \\\n  colour=red\n")
    assert err.line == 4
    assert "unknown keyword 'colour'" in str(err)


def test_an_unknown_keyword_on_a_set_line_is_refused_at_that_line() -> None:
    err = error("f\n/set colour=red\ng\n")
    assert err.line == 2
    assert "unknown keyword 'colour'" in str(err)


def test_an_unknown_keyword_on_an_unset_line_is_refused() -> None:
    err = error("f\n\n/unset colour\n")
    assert err.line == 3
    assert "unknown keyword 'colour'" in str(err)


@pytest.mark.parametrize("word", ["mode", "uid", "type", "link", "size", "flags"])
def test_a_keyword_without_a_value_is_refused(word: str) -> None:
    err = error(f"f\ng {word}\n")
    assert err.line == 2
    assert f"the keyword {word!r} needs a value" in str(err)


def test_a_keyword_without_a_value_on_a_set_line_is_refused() -> None:
    err = error("/set uid\n")
    assert err.line == 1
    assert "'uid' needs a value" in str(err)


@pytest.mark.parametrize("command", ["/reset", "/include", "/", "/etc/passwd"])
def test_an_unknown_command_is_refused(command: str) -> None:
    err = error(f"# c\n{command} type=file\n")
    assert err.line == 2
    assert f"unknown command {command!r}" in str(err)


def test_dotdot_with_keywords_is_refused() -> None:
    err = error(". type=dir\nd type=dir\n.. type=dir\n..\n")
    assert err.line == 3
    assert "'..' takes no keywords" in str(err)


def test_dotdot_above_the_root_is_refused() -> None:
    err = error(". type=dir\n  f\n  ..\n..\n..\n")
    assert err.line == 5
    assert "climbs above the root" in str(err)


def test_dotdot_on_the_first_line_is_refused() -> None:
    err = error("\n..\n")
    assert err.line == 2
    assert "climbs above the root" in str(err)


@pytest.mark.parametrize("name", [
    "..\\057etc", "a/../../etc", "a/..", "\\056\\056", ".\\056", "\\057etc\\057passwd", "\\057",
    "sub\\057..\\057..\\057x",
])
def test_a_name_that_escapes_the_tree_is_refused(name: str) -> None:
    err = error(f". type=dir\nd type=dir\n{name} type=file\n..\n..\n")
    assert err.line == 3
    assert "would leave the persistent-data tree" in str(err)


def test_a_name_with_a_nul_byte_is_refused() -> None:
    err = error("a\\000b\n")
    assert err.line == 1
    assert "would leave the persistent-data tree" in str(err)


@pytest.mark.parametrize("kind", ["char", "block", "fifo", "socket", "", "DIR"])
def test_an_unsupported_type_is_refused(kind: str) -> None:
    err = error(f"f\ng type={kind}\n")
    assert err.line == 2
    assert f"type={kind} is not supported" in str(err)


def test_an_unsupported_type_from_a_set_line_is_refused_at_the_entry() -> None:
    err = error("/set type=fifo\n\npipe\n")
    assert err.line == 3
    assert "type=fifo is not supported" in str(err)


@pytest.mark.parametrize("mode", ["0x1ff", "0789", "u+rw", "0o755", "+755", "7_55", "\u0667\u0665\u0665", ""])
def test_a_mode_that_is_not_octal_is_refused(mode: str) -> None:
    err = error(f"f\ng mode={mode}\n")
    assert err.line == 2
    assert f"mode {mode!r} is not a number" in str(err)


def test_a_mode_above_07777_is_refused() -> None:
    err = error("f mode=10000\n")
    assert err.line == 1
    assert "mode 10000 is not a permission mode" in str(err)


@pytest.mark.parametrize("mode", ["4755", "2755", "6755", "04700"])
def test_a_setuid_or_setgid_mode_is_refused(mode: str) -> None:
    err = error(f"f\n\ng mode={mode}\n")
    assert err.line == 3
    assert "sets setuid or setgid" in str(err)


def test_a_negative_mode_is_refused() -> None:
    err = error("f mode=-644\n")
    assert err.line == 1
    assert "mode '-644' is negative" in str(err)


def test_a_link_without_a_target_is_refused() -> None:
    err = error("f\nl type=link\n")
    assert err.line == 2
    assert "type=link needs link=TARGET" in str(err)
    assert error("l type=link link=\n").line == 1


def test_a_link_target_with_a_nul_byte_is_refused() -> None:
    err = error("f\nl type=link link=a\\000b\n")
    assert err.line == 2
    assert "link=" in str(err)


def test_an_absolute_link_target_is_left_to_persistent_data_to_refuse() -> None:
    # The parser keeps it; persistent_data refuses it when it creates the link.
    assert parse_one("l type=link link=/etc/passwd\n").link == "/etc/passwd"
    assert parse_one("l type=link link=../../etc\n").link == "../../etc"


@pytest.mark.parametrize("keyword", ["uid", "gid"])
def test_a_negative_owner_id_is_refused(keyword: str) -> None:
    err = error(f"f\ng {keyword}=-1\n")
    assert err.line == 2
    assert f"{keyword} '-1' is negative" in str(err)


@pytest.mark.parametrize("keyword", ["uid", "gid"])
@pytest.mark.parametrize("value", ["root", "0x10", "1.5", "+5", "1_000", "\u0661\u0660", ""])
def test_a_non_numeric_owner_id_is_refused(keyword: str, value: str) -> None:
    err = error(f"f\ng {keyword}={value}\n")
    assert err.line == 2
    assert "is not a number" in str(err)


def test_an_owner_id_with_more_digits_than_int_reads_is_refused() -> None:
    err = error("f\ng uid=" + "9" * 5000 + "\n")
    assert err.line == 2
    assert "too long a number" in str(err)


def test_an_entry_declared_again_with_another_type_is_refused() -> None:
    err = error("a type=file\nb\na type=dir\n")
    assert err.line == 3
    assert "a is declared again with another type" in str(err)


def test_the_root_declared_again_with_another_type_is_refused() -> None:
    err = error(". type=dir\n..\n. type=file\n")
    assert err.line == 3
    assert ". is declared again with another type" in str(err)


def test_a_file_with_a_child_is_refused() -> None:
    err = error("f type=file\nother\nf/g type=file\n")
    assert err.line == 3
    assert "f/g is below f, which is not a directory" in str(err)


def test_a_file_with_a_child_in_the_every_entry_closes_convention_is_refused() -> None:
    # The `..` after f is missing, so g lands inside f.
    err = error(". type=dir\n\tf type=file\n\tg type=file\n\t..\n..\n..\n")
    assert err.line == 3
    assert "f/g is below f, which is not a directory" in str(err)


def test_a_root_that_is_a_file_cannot_have_children() -> None:
    err = error(". type=file\nchild\n")
    assert err.line == 2
    assert "child is below ., which is not a directory" in str(err)


@pytest.mark.parametrize("name", ["bad\\xname", "bad\\ name", "trailing\\", "short\\12", "big\\400", "end\\8"])
def test_an_unsupported_escape_is_refused(name: str) -> None:
    err = error(f"f\n{name} type=file\n")
    assert err.line == 2
    assert "unsupported escape" in str(err)


def test_an_unsupported_escape_in_a_link_target_is_refused() -> None:
    err = error("f\nl type=link link=\\x\n")
    assert err.line == 2
    assert "unsupported escape" in str(err)


def test_a_form_feed_does_not_shift_line_numbers() -> None:
    err = error("# a form feed\x0c here\nf\x0c type=file\ng type=char\n")
    assert err.line == 3


@pytest.mark.parametrize("separator", ["\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"])
def test_only_newlines_end_lines(separator: str) -> None:
    err = error(f"# comment {separator} here\n\ng type=char\n")
    assert err.line == 3


def test_a_spec_with_too_many_entries_is_refused() -> None:
    err = error("/set type=file\n" + "f\n" * (mtree.MAX_ENTRIES + 1))
    assert err.line == mtree.MAX_ENTRIES + 2
    assert f"more than {mtree.MAX_ENTRIES} entries" in str(err)


def test_a_path_longer_than_path_max_is_refused() -> None:
    name = "x" * 200
    depth = 4096 // 201 + 1
    err = error("".join(f"{name} type=dir\n" for _ in range(depth)))
    assert err.line == depth
    assert "longer than" in str(err)


def test_a_path_of_exactly_path_max_characters_is_accepted() -> None:
    assert len(parse_one("x" * mtree.MAX_PATH + "\n").path) == mtree.MAX_PATH


# Properties: any text gives nodes or an MtreeError, and nodes stay inside the tree


def assert_inside_the_tree(nodes: list[mtree.Node]) -> None:
    assert isinstance(nodes, list)
    for node in nodes:
        assert isinstance(node, mtree.Node)
        if node.path == "":
            continue
        parts = node.path.split("/")
        assert not node.path.startswith("/")
        assert "" not in parts
        assert ".." not in parts
        assert "." not in parts
        assert "\0" not in node.path
        assert node.type in mtree.TYPES


def parse_or_refuse(text: str) -> None:
    try:
        nodes = mtree.parse(text)
    except mtree.MtreeError as exc:
        assert exc.line >= 1
        assert exc.line <= text.count("\n") + 1
        return
    assert_inside_the_tree(nodes)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_any_text_gives_nodes_inside_the_tree_or_an_mtree_error(text: str) -> None:
    parse_or_refuse(text)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec=None, exclude_categories=())))
def test_any_text_with_lone_surrogates_gives_nodes_or_an_mtree_error(text: str) -> None:
    parse_or_refuse(text)


NAMES = st.text(st.sampled_from("ab./\\#=0 \t"), min_size=1, max_size=6)
PLAUSIBLE = st.one_of(
    st.sampled_from([
        "..", ".", "/set", "/unset", "all", "#", "\\", "\\\\", "\\040", "\\000", "\\056", "\\057", "\\x",
        "\\377", "\\303\\251", "a", "b", "a/b", "/abs", "../x", "x/..", "./a", "type=dir", "type=file",
        "type=link", "type=char", "mode=0755", "mode=4755", "mode=x", "mode=07777", "uid=0", "uid=-1",
        "gid=7", "uname=u", "gname=g", "link=t", "link=/t", "link=", "nochange", "optional", "ignore",
        "tags=x", "size=1", "bogus=1", "=", "mode", "\r", "\x0c", "\u2028",
    ]),
    st.builds("{}={}".format, st.sampled_from(sorted(mtree.KEYWORDS | mtree.IGNORED)), NAMES | st.just("")),
    NAMES,
)
SEPARATORS = st.sampled_from([" ", "\t", "\n", "\n\n", " \\\n", "\n\t", "\n\t\t"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(PLAUSIBLE, SEPARATORS), max_size=60))
def test_plausible_tokens_give_nodes_inside_the_tree_or_an_mtree_error(tokens: list[tuple[str, str]]) -> None:
    parse_or_refuse("".join(token + separator for token, separator in tokens))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["d type=dir", "f", "f type=file", "..", ". type=dir", "/set type=dir",
                                 "/unset all", "l type=link link=x"]), max_size=40))
def test_nesting_lines_give_nodes_inside_the_tree_or_an_mtree_error(lines: list[str]) -> None:
    parse_or_refuse("\n".join(lines))
