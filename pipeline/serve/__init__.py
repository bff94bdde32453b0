"""``python -m pipeline serve``: the model as a Ray Serve application (REST API and a web page).

``options`` holds what a user sets and what the driver resolves; ``app`` the deployment and its
HTTP routes; ``inspection`` the request and response rules; ``pictures`` the map PNGs;
``predictor`` where the model is loaded; ``references`` the few-shot folders; ``static/`` the page.
"""
