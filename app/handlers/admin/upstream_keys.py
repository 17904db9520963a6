"""An upstream's keys: add (encrypted at once), reorder, enable, disable, delete.

Before each change the usage recorder is flushed, so key state the gateway
changed live (a 401 that disabled a key, a cooldown) is in the database before
the dashboard's edit and the reload that follows.
"""

from __future__ import annotations

from app.db import upstreams_admin as ua
from app.db.models import Upstream
from app.handlers.admin.base import AdminHandler, not_found
from app.handlers.admin.forms import FormError, ids, optional_text
from app.handlers.admin.upstreams import UpstreamHandler
from app.secretbox import mask

ACTIONS = ("up", "down", "enable", "disable", "delete")


class UpstreamKeysHandler(UpstreamHandler):
    """Adds a key at the end of the rotation; the secret never comes back to any page."""

    SUPPORTED_METHODS = ("POST",)

    async def post(self, upstream_id: str) -> None:
        secret = self.get_body_argument("secret", "").strip()
        try:
            if len(secret) < 8 or len(secret) > 4000 or any(c.isspace() for c in secret):
                raise FormError("upstreams.secret_invalid")
            label = optional_text(self.arg("label"), self.t("upstreams.key_label"), max_len=200)
        except FormError as exc:
            await self.show(int(upstream_id), error=self.t(exc.key, **exc.params))
            return
        await self.services.recorder.flush()
        async with self.services.db.session() as session:
            row = await ua.get_upstream(session, int(upstream_id))
            if row is None:
                not_found()
            last4 = mask(secret)[1:]
            key = await ua.add_key(
                session, row, self.services.secrets.encrypt(secret), last4, label or ""
            )
            await self.audit(
                session, "upstream_key_added", row.name, f"key={label or '…' + last4} id={key.id}"
            )
            await session.commit()
        await self.services.reload()
        self.redirect_with(f"/admin/upstreams/{upstream_id}", "key_added")


class UpstreamKeyActionHandler(AdminHandler):
    nav = "upstreams"

    async def post(self, upstream_id: str, key_id: str, action: str) -> None:
        await self.services.recorder.flush()
        async with self.services.db.session() as session:
            row = await ua.get_upstream(session, int(upstream_id))
            key = ua.find_key(row, int(key_id)) if row is not None else None
            if row is None or key is None or action not in ACTIONS:
                not_found()
            shown = f"{key.label or '…' + key.last4} id={key.id}"
            msg: str | None
            if action in ("up", "down"):
                if ua.move_key(row, key.id, -1 if action == "up" else 1):
                    await self.audit(session, "upstream_keys_reordered", row.name, order(row))
                    msg = "key_moved"
                else:
                    msg = None
            elif action == "enable":
                ua.set_key_enabled(key, True)
                await self.audit(session, "upstream_key_enabled", row.name, shown)
                msg = "key_enabled"
            elif action == "disable":
                ua.set_key_enabled(key, False, self.t("upstreams.disabled_by", user=self.username))
                await self.audit(session, "upstream_key_disabled", row.name, shown)
                msg = "key_disabled"
            else:
                await ua.delete_key(session, row, key)
                await self.audit(session, "upstream_key_deleted", row.name, shown)
                msg = "key_deleted"
            await session.commit()
        if msg is not None:
            await self.services.reload()
        self.redirect_with(f"/admin/upstreams/{upstream_id}", msg)


def order(row: Upstream) -> str:
    """The audit detail of a rotation order: labels or masked keys, never secrets."""
    keys = sorted(row.keys, key=lambda k: (k.position, k.id))
    return "order=" + ",".join(k.label or "…" + k.last4 for k in keys)


class UpstreamKeyOrderHandler(AdminHandler):
    """The whole rotation order at once (drag and drop posts it)."""

    nav = "upstreams"

    async def post(self, upstream_id: str) -> None:
        try:
            wanted = ids(self.get_body_argument("order", ""))
        except FormError:
            self.send_error(400)
            return
        await self.services.recorder.flush()
        async with self.services.db.session() as session:
            row = await ua.get_upstream(session, int(upstream_id))
            if row is None:
                not_found()
            valid = ua.reorder_keys(row, wanted)
            if valid:
                await self.audit(session, "upstream_keys_reordered", row.name, order(row))
                await session.commit()
        if not valid:
            self.send_error(400)
            return
        await self.services.reload()
        self.redirect_with(f"/admin/upstreams/{upstream_id}", "order_saved")
