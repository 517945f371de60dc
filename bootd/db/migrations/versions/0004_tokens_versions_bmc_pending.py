"""Nodes: optimistic-lock version, origin, sealed token; BMC credentials pending
until the node reports them applied, with a unique address per reservation.

`nodes.token` now holds the SHA-256 of the node's token (lookups, verification)
and `token_sealed` the token encrypted under the state directory's key (to put
it in the node's own boot script). Rows written before this revision still hold
the plain token with no sealed copy; the repository converts them at start
(`Repository.seal_tokens`), since only it has the key.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('origin', sa.String(length=16), server_default='operator',
                                      nullable=False))
        batch_op.add_column(sa.Column('token_sealed', sa.LargeBinary(), nullable=True))
        batch_op.create_index('ix_nodes_token', ['token'], unique=True)
    op.create_table(
        'bmc_pending',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('node_id', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=255), nullable=True),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('password_encrypted', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name='fk_bmc_pending_node_id_nodes',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_bmc_pending'),
        sa.UniqueConstraint('node_id', name='uq_bmc_pending_node_id'),
        sa.UniqueConstraint('address', name='uq_bmc_pending_address'),
    )


def downgrade() -> None:
    op.drop_table('bmc_pending')
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_index('ix_nodes_token')
        batch_op.drop_column('token_sealed')
        batch_op.drop_column('origin')
        batch_op.drop_column('version')
