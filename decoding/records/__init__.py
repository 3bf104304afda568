"""What is written down and read back: traces and their formats, comparisons, session files and
the keeper that saves them."""
