# One image for every service: Airflow, the Spark master and workers, and so the Spark driver and
# executors all run the same Python, Spark, TensorFlow and TensorFlowOnSpark.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps git make libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tfos
COPY requirements.txt .
RUN python -m venv /opt/tfos/.venv \
 && /opt/tfos/.venv/bin/pip install --no-cache-dir -r requirements.txt \
 && /opt/tfos/.venv/bin/pip check
COPY . .
RUN /opt/tfos/.venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation -e .
ENV PATH=/opt/tfos/.venv/bin:$PATH \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/tfos/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/tfos/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    TF_CPP_MIN_LOG_LEVEL=2
