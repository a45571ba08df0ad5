"""GenAI instrumentation tests: a fake LLM server, an OTLP receiver and captures of what real libraries emit."""
