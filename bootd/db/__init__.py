"""The inventory database: schema, migrations, and the repository that is its only writer."""
