from django.core.management.base import BaseCommand

from accounts.services import api_key_create, team_get_or_create_for_user


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user and team if needed); prints the key last."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--team", help="Team name (default: the user's team, or a new one named after the user)")
        parser.add_argument("--name", default="", help="A label for the key")

    def handle(self, *args, username, team=None, name="", **options):
        user, team_obj = team_get_or_create_for_user(username=username, team_name=team)
        api_key, raw_key = api_key_create(user=user, team=team_obj, name=name)
        self.stderr.write(f"API key lk_{api_key.prefix}… for {user.username} in team {team_obj.name}:")
        self.stdout.write(raw_key)
