"""Values and rules every layer shares: settings, scores, processors, prompts and chat templates,
token texts, grammars, errors, files and the checked shapes of what is read. It imports nothing
else of decoding's; only `scores`, `processors`, `distribution` and `grammar` need torch."""
