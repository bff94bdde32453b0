"""The foundation every stage may import; it imports no stage (synth, train, evaluate) and nothing
else of ``pipeline`` (tests/unit/test_import_rule.py checks both).

``config`` (strict YAML -> dataclasses), ``errors`` (exit codes), ``files`` (hashes, atomic writes),
``runtime`` (environment defaults, the Ray session), ``mlflow_store`` (where MLflow writes).
"""
