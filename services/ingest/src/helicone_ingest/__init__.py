"""Helicone ingest: Kafka log events to ClickHouse, the body store and Postgres."""
