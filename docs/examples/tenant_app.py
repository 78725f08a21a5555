"""A tenant's application on a lease of the pool, in Python with psycopg.

Any PostgreSQL client works with the URL that `bulkhead creds issue
--tenant T` prints; nothing in the application names the tenant.

    python3 tenant_app.py "$LEASE_URL" "a note"

prints every note the application can see, as JSON.
"""

import json
import sys

import psycopg

url, note = sys.argv[1], sys.argv[2]
with psycopg.connect(url) as conn:
    # No tenant_id: the pool fills it in from the login...
    conn.execute("INSERT INTO notes (body) VALUES (%s)", (note,))
    # ...and shows this tenant's rows only, WHERE clause or not.
    rows = conn.execute("SELECT body FROM notes ORDER BY body").fetchall()
print(json.dumps([body for (body,) in rows]))
