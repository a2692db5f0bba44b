"""A classifier plug-in for the policy tests: flags prompts that shout."""


def shouting(field: str, text: str) -> str | None:
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= 12 and all(c.isupper() for c in letters):
        return "harassment"
    return None
