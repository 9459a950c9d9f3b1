"""Arena: people compare two anonymised models' answers side by side and vote; Bradley–Terry
ratings with bootstrap intervals are fitted over the votes, and an LLM judge can vote too."""
