"""A table's string form keys control rows and shard state: two tables never share one."""

from __future__ import annotations

import doctest

from hypothesis import given
from hypothesis import strategies as st

from operators import events
from operators.events import TableName
from operators.keys import shard_of, state_key

# Postgres identifiers: any character but NUL
identifiers = st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=8)


def test_dotted_names_that_once_collided_are_told_apart() -> None:
    dotted_schema, dotted_table = TableName("a.b", "c"), TableName("a", "b.c")
    assert str(dotted_schema) != str(dotted_table)
    assert state_key(dotted_schema, (1,)) != state_key(dotted_table, (1,))


def test_plain_names_keep_the_form_existing_rows_and_state_were_written_with() -> None:
    table = TableName("inventory", "Customers_2")
    assert str(table) == "inventory.Customers_2"
    assert state_key(table, (1, "x")) == b'inventory.Customers_2\x00[1,"x"]'
    assert shard_of(state_key(table, (1, "x")), 64) == shard_of(b'inventory.Customers_2\x00[1,"x"]',
                                                                64)


@given(identifiers, identifiers, identifiers, identifiers)
def test_two_tables_have_the_same_string_only_when_they_are_the_same(a: str, b: str, c: str,
                                                                     d: str) -> None:
    assert (str(TableName(a, b)) == str(TableName(c, d))) == ((a, b) == (c, d))


def test_the_docstring_examples_hold() -> None:
    result = doctest.testmod(events)
    assert result.attempted > 0 and result.failed == 0
