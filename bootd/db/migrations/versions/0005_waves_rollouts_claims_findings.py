"""Install waves and rollouts, subnet claims of several daemons, rogue DHCP findings.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        'rollouts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('profile', sa.String(length=64), nullable=False),
        sa.Column('selector', sa.Text(), nullable=False),
        sa.Column('max_parallel', sa.Integer(), nullable=True),
        sa.Column('max_failures', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('actor', sa.String(length=64), nullable=False),
        _when('created_at'), _when('updated_at'),
        sa.PrimaryKeyConstraint('id', name='pk_rollouts'),
    )
    op.create_table(
        'admissions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('node_id', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=32), nullable=False),
        sa.Column('rack', sa.String(length=64), nullable=True),
        sa.Column('daemon', sa.String(length=64), nullable=False),
        sa.Column('rollout_id', sa.Integer(), nullable=True),
        _when('allocated_at'), _when('queued_at'), _when('asked_at'), _when('admitted_at', True),
        sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name='fk_admissions_node_id_nodes',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name='fk_admissions_rollout_id_rollouts',
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name='pk_admissions'),
        sa.UniqueConstraint('node_id', name='uq_admissions_node_id'),
    )
    op.create_table(
        'rollout_nodes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('rollout_id', sa.Integer(), nullable=False),
        sa.Column('node_id', sa.Integer(), nullable=True),
        sa.Column('node_name', sa.String(length=63), nullable=False),
        sa.Column('rack', sa.String(length=64), nullable=True),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        _when('updated_at'),
        sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name='fk_rollout_nodes_node_id_nodes',
                                ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name='fk_rollout_nodes_rollout_id_rollouts',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_rollout_nodes'),
        sa.UniqueConstraint('rollout_id', 'node_name', name='uq_rollout_nodes_rollout_node'),
    )
    op.create_index('ix_rollout_nodes_rollout_id', 'rollout_nodes', ['rollout_id'])
    op.create_index('ix_rollout_nodes_node_id', 'rollout_nodes', ['node_id'])
    op.create_table(
        'subnet_claims',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('cidr', sa.String(length=18), nullable=False),
        sa.Column('daemon', sa.String(length=64), nullable=False),
        sa.Column('address', sa.String(length=15), nullable=False),
        _when('claimed_at'), _when('heartbeat_at'),
        sa.PrimaryKeyConstraint('id', name='pk_subnet_claims'),
        sa.UniqueConstraint('cidr', name='uq_subnet_claims_cidr'),
    )
    op.create_table(
        'dhcp_findings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('daemon', sa.String(length=64), nullable=False),
        sa.Column('interface', sa.String(length=16), nullable=False),
        sa.Column('server_ip', sa.String(length=15), nullable=False),
        sa.Column('server_mac', sa.String(length=17), nullable=False),
        sa.Column('method', sa.String(length=8), nullable=False),
        sa.Column('offered', sa.Text(), nullable=False),
        _when('first_seen'), _when('last_seen'),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_dhcp_findings'),
        sa.UniqueConstraint('daemon', 'interface', 'server_ip', 'server_mac', name='uq_dhcp_findings_server'),
    )


def downgrade() -> None:
    op.drop_table('dhcp_findings')
    op.drop_table('subnet_claims')
    op.drop_index('ix_rollout_nodes_node_id', table_name='rollout_nodes')
    op.drop_index('ix_rollout_nodes_rollout_id', table_name='rollout_nodes')
    op.drop_table('rollout_nodes')
    op.drop_table('admissions')
    op.drop_table('rollouts')
