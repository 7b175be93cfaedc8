"""Dead letters of events whose keys are shredded keep no error text.

Revision ID: 0011_dead_letter_redaction
Revises: 0010_contact_homes
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0011_dead_letter_redaction"
down_revision = "0010_contact_homes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
-- A projection's account of failing on an event can quote what the event held. Written
-- after the event's keys were shredded (a rebuild parks its failures when it swaps its
-- copies in; a projector after its retries), the text is '[erased]', as an erasure or a
-- retention run makes the text of those already parked (and they lock the table while
-- they do, so none is being written meanwhile).
CREATE FUNCTION dead_letter_redacted() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT FROM events AS e JOIN data_keys AS k
                 ON k.key_id IN ((e.payload->'sealed'->'identity'->>'key')::bigint,
                                 (e.payload->'sealed'->'content'->>'period_key')::bigint)
                WHERE e.position = NEW.position AND k.key IS NULL) THEN
        NEW.error := '[erased]';
    END IF;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER dead_letters_redacted BEFORE INSERT OR UPDATE OF error ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION dead_letter_redacted();
""")


def downgrade() -> None:
    op.execute("""
DROP TRIGGER dead_letters_redacted ON dead_letters;
DROP FUNCTION dead_letter_redacted();
""")
