# The web server and the controller (one image, two commands; see docker-compose.yml).
#   docker build -f docker/web.Dockerfile -t launch-web .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LAUNCH_HOME=/data

# openssh-client: the controller reaches hosts registered as ssh://user@host through the ssh
# binary (the Docker SDK's use_ssh_client), with the keys in /home/launch/.ssh.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt /app/requirements.txt
RUN python -m pip install --no-cache-dir -r requirements.txt \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin launch \
    && mkdir -p /data && chown launch /data
COPY . /app

USER launch
EXPOSE 8000
# The supervisor with --web-only: it imports the app once, forks the web workers (which share it)
# and heals them (launch_site/supervisor.py).
CMD ["sh", "-c", "python manage.py migrate --noinput && python manage.py collectstatic --noinput && exec python -m launch_site.supervisor --web-only --home /data --host 0.0.0.0 --port ${PORT:-8000} --web-workers ${WEB_WORKERS:-$(python -c 'from launch_site.env import default_web_workers; print(default_web_workers())')} --access-log"]
