"""tokenstep's terminal app (Textual) and its `tokenstep` command."""
