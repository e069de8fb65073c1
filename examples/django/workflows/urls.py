from django.urls import path

from workflows import views

app_name = "workflows"
urlpatterns = [
    path("", views.index, name="index"),
    path("workflows/", views.start, name="start"),
    path("workflows/<uuid:correlation_id>/", views.status, name="status"),
    path("workflows/<uuid:correlation_id>/status.json", views.status_json, name="status_json"),
]
