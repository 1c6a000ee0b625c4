from django.urls import path

from providers import views

urlpatterns = [
    path("configs", views.ProviderConfigListCreateView.as_view(), name="provider-config-list"),
    path("configs/test", views.ProviderSettingsTestView.as_view(), name="provider-settings-test"),
    path("configs/<int:pk>", views.ProviderConfigDetailView.as_view(), name="provider-config-detail"),
    path("configs/<int:pk>/test", views.ProviderConfigTestView.as_view(), name="provider-config-test"),
]
