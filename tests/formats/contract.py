"""What every source dialect must do, on the Python decoder and on the native fast path.

Subclass `DialectContract` once per dialect (`test_<connector>.py`) with a builder of the
connector's messages; each test runs on both decoders. A dialect whose versions the native path
does not compute (`native = False`) must have its messages declined by the fast path, never
decoded differently.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from formats.dialect import SourceDialect
from formats.registry import dialect_for
from operators.decode import Decoder
from operators.events import ChangeEvent, DlqRecord, Op, RawMessage


class DialectContract:
    dialect: ClassVar[SourceDialect]

    def message(self, op: str, key: int, rank: int, offset: int) -> RawMessage:
        """A change of row `key` whose version ranks `rank`-th in the connector's order."""
        raise NotImplementedError

    def bad_version(self, offset: int) -> RawMessage:
        """A change whose source block holds no usable version."""
        raise NotImplementedError

    @pytest.fixture(params=[True, False], ids=["native", "python"])
    def decoder(self, request: pytest.FixtureRequest) -> Decoder:
        return Decoder("public", {}, None, native=request.param)

    def decode(self, decoder: Decoder, msg: RawMessage) -> Any:
        """Decode twice: the first teaches the fast path a plan, the second uses it."""
        decoder.decode(msg)
        return decoder.decode(msg)

    def test_the_registry_picks_this_dialect_by_connector(self) -> None:
        assert dialect_for({"connector": self.dialect.connector}) is self.dialect

    def test_an_upsert_decodes_to_its_key_and_row(self, decoder: Decoder) -> None:
        event = self.decode(decoder, self.message("c", 7, 1, 10))
        assert isinstance(event, ChangeEvent)
        assert (event.op, event.offset) == (Op.UPSERT, 10) and event.values
        assert 7 in event.key

    def test_a_delete_decodes_to_a_delete_of_its_key(self, decoder: Decoder) -> None:
        event = self.decode(decoder, self.message("d", 7, 2, 11))
        assert isinstance(event, ChangeEvent)
        assert (event.op, event.values) == (Op.DELETE, None) and 7 in event.key

    def test_versions_follow_the_connectors_order(self, decoder: Decoder) -> None:
        versions = [self.decode(decoder, self.message("u", 7, rank, rank)).version
                    for rank in (3, 1, 2)]
        assert versions[1] < versions[2] < versions[0]

    def test_a_change_delivered_twice_has_one_version(self, decoder: Decoder) -> None:
        first = self.decode(decoder, self.message("u", 7, 5, 20))
        again = self.decode(decoder, self.message("u", 7, 5, 21))
        assert first.version == again.version and first.offset != again.offset

    def test_a_change_without_a_usable_version_goes_to_the_dlq(self, decoder: Decoder) -> None:
        record = self.decode(decoder, self.bad_version(30))
        assert isinstance(record, DlqRecord)
        assert (record.error_type, record.offset) == ("bad_version", 30)

    def test_the_fast_path_decodes_exactly_what_the_dialect_allows(self) -> None:
        decoder = Decoder("public", {}, None, native=True)
        first, second = self.message("u", 8, 1, 40), self.message("u", 9, 2, 41)
        python = Decoder("public", {}, None, native=False)
        decoder.decode(first)  # teaches a plan if the dialect allows one
        fast = decoder._fast.decode(second)  # the fast path alone
        if self.dialect.native:
            assert fast is not None and (fast.key, fast.version, fast.values) == (
                python.decode(second).key, python.decode(second).version,
                python.decode(second).values)
        else:
            assert fast is None
