# Merge Studio on a GPU host:  docker build -t merge-studio . &&
#   docker run --gpus all -p 7860:7860 -v $HOME/merge-studio:/workspace merge-studio
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip git \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv

WORKDIR /app
# On Linux x86-64 the PyPI torch==2.13.0 wheel is the CUDA build; the rest is pinned in requirements.txt.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# what the studio makes (exports, grids, reports, recipes) goes to the workspace, never into /app
ENV MERGE_STUDIO_WORKSPACE=/workspace
VOLUME /workspace
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
