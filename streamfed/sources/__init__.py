"""Data in: synthetic card transactions and replay of real data files, produced as Avro records."""

from streamfed.sources.producer import RecordProducer, pace
from streamfed.sources.replay import read_source_rows
from streamfed.sources.simulator import MERCHANT_CATEGORIES, TransactionSimulator

__all__ = ["MERCHANT_CATEGORIES", "RecordProducer", "TransactionSimulator", "pace", "read_source_rows"]
