"""Fast compiled CPU selective scan (work in progress)."""
