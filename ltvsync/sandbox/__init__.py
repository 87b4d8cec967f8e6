"""Local emulators of the Salesforce, Mixpanel, Zendesk and Airtable HTTP APIs over a synthetic world.

Imported only by the CLI (``demo``, ``sandbox serve``), tests and benchmarks; production code never
depends on it.
"""
