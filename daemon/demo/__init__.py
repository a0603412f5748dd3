"""The closed-loop demo (``nextstate demo``): a simulated deployment learning from its traffic."""


def demo_main(argv: list[str]) -> int:
    """Entry point of ``nextstate demo`` (imported lazily: torch and matplotlib are heavy)."""
    from nextstate.daemon.demo.main import demo_main as main

    return main(argv)
