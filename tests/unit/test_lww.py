"""LWW decisions: concrete cases and a hypothesis property against a max-version oracle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.events import ChangeEvent, Op, TableName
from operators.keys import state_key
from operators.lww import (
    STALE_DELETED,
    STALE_OLDER,
    STALE_TRUNCATED,
    KeyState,
    Outcome,
    decide_batch,
    judge,
)

T = TableName("public", "t")


def event(key: int, version: int, op: Op = Op.UPSERT, offset: int = 0, **values) -> ChangeEvent:
    return ChangeEvent(
        table=T, key_columns=("id",), key=(key,), op=op, version=version.to_bytes(4, "big"),
        values=None if op is Op.DELETE else {"id": key, **values}, schema=None, topic="t",
        partition=0, offset=offset,
    )


def v(n: int) -> bytes:
    return n.to_bytes(4, "big")


def test_judge_outcomes():
    assert judge(None, None, v(1)) == (Outcome.APPLIED, "")
    assert judge(KeyState(v(2), False), None, v(3))[0] is Outcome.APPLIED
    assert judge(KeyState(v(2), False), None, v(2))[0] is Outcome.DUPLICATE
    assert judge(KeyState(v(2), False), None, v(1)) == (Outcome.STALE, STALE_OLDER)
    assert judge(KeyState(v(5), True), None, v(4)) == (Outcome.STALE, STALE_DELETED)
    assert judge(None, v(9), v(9)) == (Outcome.STALE, STALE_TRUNCATED)
    assert judge(KeyState(v(3), False), v(9), v(7)) == (Outcome.STALE, STALE_TRUNCATED)
    assert judge(KeyState(v(3), False), v(9), v(10))[0] is Outcome.APPLIED


def test_batch_merges_partial_images_and_fences_deletes():
    events = [event(1, 1, a=1, b=1), event(1, 3, b=3), event(1, 2, a=2),
              event(2, 5, Op.DELETE), event(2, 4, a=4)]
    decision = decide_batch(events, {state_key(T, (1,)): None, state_key(T, (2,)): None}, {})
    one = decision.writes[state_key(T, (1,))]
    assert one.version == v(3) and one.values == {"id": 1, "a": 1, "b": 3}
    two = decision.writes[state_key(T, (2,))]
    assert two.op is Op.DELETE and two.values is None
    assert [(s.version, s.applied_version, s.reason) for s in decision.stale] == [
        (v(2), v(3), STALE_OLDER), (v(4), v(5), STALE_DELETED)]
    assert decision.applied == 3


def test_a_later_image_with_every_earlier_column_is_used_as_is():
    """No merge when nothing of the earlier image would survive it: the write shares the
    event's own values (so the writer can send the event's native COPY row)."""
    full = event(1, 2, a=2, b=2)
    decision = decide_batch([event(1, 1, a=1, b=1), full, event(2, 1, a=1), event(2, 2, b=2)],
                            {state_key(T, (1,)): None, state_key(T, (2,)): None}, {})
    assert decision.writes[state_key(T, (1,))].values is full.values
    assert decision.writes[state_key(T, (2,))].values == {"id": 2, "a": 1, "b": 2}  # merged


# -- property: any interleaving of duplicates, reorderings and deletes converges -------------

changes = st.lists(  # per key: the true change history, as (op is delete, value)
    st.lists(st.tuples(st.booleans(), st.integers(0, 9)), min_size=1, max_size=6),
    min_size=1, max_size=4,
)


@st.composite
def arrivals(draw):
    history = draw(changes)
    versioned = [(key, version, delete, value)
                 for key, key_changes in enumerate(history)
                 for version, (delete, value) in enumerate(key_changes, start=1)]
    sequence = draw(st.lists(st.sampled_from(versioned), min_size=1, max_size=30))
    cuts = draw(st.lists(st.integers(0, len(sequence)), max_size=4))
    return sequence, sorted(set(cuts))


def oracle(sequence):
    """Independent model: per key, the highest version seen so far wins."""
    best: dict[int, tuple[int, bool, int]] = {}
    stale = duplicates = 0
    for key, version, delete, value in sequence:
        current = best.get(key)
        if current is None or version > current[0]:
            best[key] = (version, delete, value)
        elif version < current[0]:
            stale += 1
        else:
            duplicates += 1
    rows = {key: value for key, (_, delete, value) in best.items() if not delete}
    return rows, stale, duplicates


@settings(max_examples=400, deadline=None)
@given(arrivals())
def test_batches_converge_to_max_version_oracle(case):
    sequence, cuts = case
    store: dict[bytes, KeyState] = {}
    table: dict[int, tuple[bytes, int]] = {}
    tombstones: dict[int, bytes] = {}
    stale = duplicates = 0
    bounds = [0, *cuts, len(sequence)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        batch = [event(k, ver, Op.DELETE if d else Op.UPSERT, x=val)
                 for k, ver, d, val in sequence[start:end]]
        decision = decide_batch(batch, {e.row_id: store.get(e.row_id) for e in batch}, {})
        stale += len(decision.stale)
        duplicates += decision.duplicates
        store.update(decision.new_states)
        for write in decision.writes.values():  # what the version-guarded SQL does
            key = write.event.key[0]
            if write.op is Op.DELETE:
                if key not in table or table[key][0] < write.version:
                    table.pop(key, None)
                    tombstones[key] = max(tombstones.get(key, b""), write.version)
            elif write.version > tombstones.get(key, b"") and (
                    key not in table or table[key][0] < write.version):
                table[key] = (write.version, write.values["x"])
    rows, expected_stale, expected_duplicates = oracle(sequence)
    assert {k: x for k, (_, x) in table.items()} == rows
    assert (stale, duplicates) == (expected_stale, expected_duplicates)
