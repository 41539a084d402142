"""Call records: calls, turns, usage, events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TS = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("fs_uuid", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("caller", sa.Text(), nullable=True),
        sa.Column("caller_name", sa.Text(), nullable=True),
        sa.Column("callee", sa.Text(), nullable=True),
        sa.Column("direction", sa.Text(), nullable=True),
        sa.Column("codec", sa.Text(), nullable=True),
        sa.Column("codec_rate", sa.Integer(), nullable=True),
        sa.Column("started_at", UTC_TS, nullable=False),
        sa.Column("answered_at", UTC_TS, nullable=True),
        sa.Column("ended_at", UTC_TS, nullable=True),
        sa.Column("hangup_cause", sa.Text(), nullable=True),
        sa.Column("hangup_by", sa.String(16), nullable=True),
        sa.Column("providers", sa.JSON(), nullable=False),
        sa.Column("fallbacks", sa.JSON(), nullable=False),
        sa.Column("dtmf", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("recording", sa.Text(), nullable=True),
    )
    op.create_index("ix_calls_fs_uuid", "calls", ["fs_uuid"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_status", "calls", ["status"])

    op.create_table(
        "turns",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("caller_text", sa.Text(), nullable=False),
        sa.Column("agent_text", sa.Text(), nullable=False),
        sa.Column("agent_full", sa.Text(), nullable=False),
        sa.Column("barge_in", sa.Boolean(), nullable=False),
        sa.Column("endpoint_reason", sa.Text(), nullable=False),
        sa.Column("timings_ms", sa.JSON(), nullable=False),
        sa.Column("voice_to_voice_ms", sa.Float(), nullable=True),
        sa.Column("overhead_ms", sa.Float(), nullable=True),
        sa.Column("barge_in_timings", sa.JSON(), nullable=True),
        sa.Column("tool_calls", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
    )
    op.create_index("ix_turns_call_id", "turns", ["call_id"])

    op.create_table(
        "usage",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("audio_seconds", sa.Float(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("characters", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("at", UTC_TS, nullable=False),
    )
    op.create_index("ix_usage_call_id", "usage", ["call_id"])

    op.create_table(
        "events",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(36), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", UTC_TS, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_events_call_id", "events", ["call_id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("usage")
    op.drop_table("turns")
    op.drop_table("calls")
