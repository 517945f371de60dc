"""BMCs: what bootd last saw (reachable, power state, last error, when).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('bmcs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reachable', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('power', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bmcs', schema=None) as batch_op:
        for name in ('checked_at', 'last_error', 'power', 'reachable'):
            batch_op.drop_column(name)
