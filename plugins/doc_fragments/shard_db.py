# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  dsn:
    description:
      - The backend database, C(sqlite:///absolute/path.db) or
        C(postgresql://user[:password]@host:port/database).
      - SQLAlchemy's absolute form C(sqlite:////absolute/path.db) names the same file.
      - The same DSN C(edge-backend) is run with. It may hold a password, so it is never
        logged or returned; messages name the database without it.
    type: str
    required: true
requirements:
  - psycopg 3 (Python package C(psycopg)) for C(postgresql://) DSNs, on the host the module runs on.
notes:
  - Runs where the database is reachable, normally the controller, with C(delegate_to) C(localhost).
  - The tables belong to C(edge-backend), which creates and migrates them
    (C(edge-backend init-db --dsn ...)); the module never creates a table.
  - An SQLite database must already exist; the module does not create the file.
"""
