from django.apps import AppConfig


class EndpointsConfig(AppConfig):
    name = "endpoints"
    verbose_name = "Model endpoints"

    def ready(self):
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from accounts.models import ApiKey, Membership, Team
        from endpoints.callbacks import drain
        from endpoints.models import ModelEndpoint
        from launch_site.route_generation import on_saved_or_deleted
        from workers.tick import register_tick_hook

        register_tick_hook(drain)
        # What the inference routes' cache reads (endpoints.route_cache): a write moves the
        # routing generation. QuerySet.update sends no signal: RouteChangingQuerySet covers
        # ModelEndpoint's and ApiKey's; a user or membership changes through save() or delete().
        for model in (ModelEndpoint, ApiKey, Membership, Team, get_user_model()):
            post_save.connect(on_saved_or_deleted, sender=model, dispatch_uid=f"route-generation-save-{model.__name__}")
            post_delete.connect(on_saved_or_deleted, sender=model, dispatch_uid=f"route-generation-delete-{model.__name__}")
