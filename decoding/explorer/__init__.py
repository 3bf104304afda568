"""What a person drives: the explorer the app renders (its view, panels and commands), and the
trace, replay and diff commands built on it."""
