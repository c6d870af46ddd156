"""The web dashboard: server-rendered pages with htmx for the live parts (CONVENTIONS "Dashboard")."""
