"""The benchmarks' shop (bench/run.py, bench/layers.py): a live model per menu mode, each with one menu of that
mode and one item, fans with plenty of tokens, and everyone's access tokens. No import-time side effects."""
from __future__ import annotations


def seed(runtime, app, modes=("OFF",), fans: int = 200, admins: int = 0, prefix: str = "bench") -> dict:
    """{"menus": {mode: {menu_id, item_id, model_id}}, "tokens": fans', "model_tokens", "admin_tokens"}."""
    from models.ledger import create_accounts, top_up
    from models.menus import Menu, MenuItem
    from models.shows import Show
    from models.users import User
    from web.auth import sign_in

    s = runtime.new_session()
    probe = User(username="probe", role="fan")
    probe.set_password(prefix)  # hashed once: it is slow on purpose
    users = {}
    for role, n in (("model", len(modes)), ("fan", fans), ("admin", admins)):
        users[role] = [User(username=f"{prefix}-{role}-{i}", role=role, password_hash=probe.password_hash)
                       for i in range(n)]
        s.add_all(users[role])
    s.flush()
    for u in users["model"] + users["fan"]:
        create_accounts(s, u)
    s.flush()
    for u in users["fan"]:
        top_up(s, u.id, 10_000_000)
    menus = {}
    for model, mode in zip(users["model"], modes):
        s.add(Show(model_id=model.id))  # live: Queue OFF items are sold during a show
        menu = Menu(model_id=model.id, name=f"Bench {mode}", queue_mode=mode, queue_order="fifo")
        s.add(menu)
        s.flush()
        item = MenuItem(menu_id=menu.id, name="Kiss", token_value=10, bonus_loyalty_points=1,
                        estimated_duration_minutes=2)
        s.add(item)
        s.flush()
        menus[mode] = {"menu_id": str(menu.id), "item_id": str(item.id), "model_id": str(model.id)}
    s.commit()
    with app.app_context():
        tokens = {role: [sign_in(s, u)["access_token"] for u in users[role]] for role in users}
    s.close()
    return {"menus": menus, "tokens": tokens["fan"], "model_tokens": tokens["model"], "admin_tokens": tokens["admin"]}
