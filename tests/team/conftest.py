from tests.team.support import make_fake  # noqa: F401  (fixture)
