# Docker targets for ptuning. Included from the top-level Makefile (`include docker/docker.mk`).
# Every knob is a make variable with a default; override on the command line, e.g.
#   make docker-run JOB=lora_8_peft GPUS='"device=1"' HF_CACHE=/data/hf RESULTS=/data/ptuning-results
#
#   make docker-build               build the CUDA image (docker/Dockerfile) as $(IMAGE), torch from requirements/torch.txt
#   make docker-run                 all rows:   ptuning run-all $(ARGS)
#   make docker-run JOB=name        one row:    ptuning run name $(ARGS)
#   make docker-ptuning CMD='...'   any ptuning subcommand with the same mounts (e.g. CMD=tables)
#   make docker-shell               bash in the container with the same mounts
#   make docker-test                real build on a local CPU stand-in base + smoke (no GPU, no registry)

IMAGE             ?= ptuning:latest
DOCKERFILE        ?= docker/Dockerfile
# Empty: the Dockerfile's default (python:3.11-slim-bookworm; torch comes from requirements/torch.txt).
BASE_IMAGE        ?=
# Where the pinned torch comes from: empty = PyPI's CUDA wheel. Extra pip options for that one install, e.g.
# TORCH_PIP_ARGS=--find-links=/wheels (make docker-test) or "--index-url https://download.pytorch.org/whl/cpu".
TORCH_PIP_ARGS    ?=
# 1 (default) fails the build on a CPU-only torch; make docker-test, which installs the CPU wheel, passes 0.
TORCH_REQUIRE_CUDA ?=
DOCKER_BUILD_ARGS ?=
# Passed to `docker run --gpus`; empty runs without GPUs (CPU only).
GPUS              ?= all
# The host's Hugging Face cache (models, datasets), mounted as HF_HOME in the container.
HF_CACHE          ?= $(or $(HF_HOME),$(HOME)/.cache/huggingface)
RESULTS           ?= $(CURDIR)/results
# Files written in the container belong to this host user.
USER_ID           ?= $(shell id -u)
GROUP_ID          ?= $(shell id -g)
SHM_SIZE          ?= 8g
# Extra flags for `docker run` (e.g. -e HF_HUB_OFFLINE=1) and extra arguments for ptuning itself.
DOCKER_RUN_ARGS   ?=
ARGS              ?=
JOB               ?=
CMD               ?= --help
# Interactive terminal only when make itself runs in one (CI has none).
DOCKER_TTY        ?= $(shell [ -t 0 ] && echo -it)
# docker-test: the image tag it builds and the stand-in base it builds on.
TEST_IMAGE        ?= ptuning:docker-test
STANDIN_IMAGE     ?= ptuning-standin-base

# PTUNING_IMAGE / PTUNING_IMAGE_ID: recorded in every result (environment.image), so a result names its image.
DOCKER_RUN = docker run --rm --init $(DOCKER_TTY) $(if $(strip $(GPUS)),--gpus $(GPUS)) \
	--user $(USER_ID):$(GROUP_ID) --shm-size $(SHM_SIZE) \
	-e PTUNING_IMAGE=$(IMAGE) -e PTUNING_IMAGE_ID=$$(docker image inspect -f '{{.Id}}' $(IMAGE) 2>/dev/null) \
	-v "$(abspath $(HF_CACHE))":/hf-cache -v "$(abspath $(RESULTS))":/app/results \
	$(DOCKER_RUN_ARGS)

.PHONY: docker-build docker-run docker-ptuning docker-shell docker-test docker-dirs

docker-build:  ## build the CUDA image (make variable IMAGE, default ptuning:latest) from docker/Dockerfile
	docker build -f $(DOCKERFILE) -t $(IMAGE) $(if $(strip $(BASE_IMAGE)),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
		$(if $(strip $(TORCH_PIP_ARGS)),--build-arg "TORCH_PIP_ARGS=$(TORCH_PIP_ARGS)") \
		$(if $(strip $(TORCH_REQUIRE_CUDA)),--build-arg TORCH_REQUIRE_CUDA=$(TORCH_REQUIRE_CUDA)) \
		$(DOCKER_BUILD_ARGS) .

# Create the mounted folders as the host user first (docker would create missing ones owned by root).
docker-dirs:
	@mkdir -p "$(abspath $(HF_CACHE))" "$(abspath $(RESULTS))"

docker-run: docker-dirs  ## all rows in the container on the GPUs (or one: JOB=name)
	$(DOCKER_RUN) $(IMAGE) $(if $(strip $(JOB)),run $(JOB),run-all) $(ARGS)

docker-ptuning: docker-dirs  ## any ptuning subcommand in the container: CMD="tables"
	$(DOCKER_RUN) $(IMAGE) $(CMD)

docker-shell: docker-dirs  ## bash in the container, same mounts
	$(DOCKER_RUN) -it --entrypoint bash $(IMAGE)

docker-test:  ## real image build on a CPU stand-in base + smoke in the container (root; no GPU)
	TEST_IMAGE=$(TEST_IMAGE) STANDIN_IMAGE=$(STANDIN_IMAGE) bash docker/docker-test.sh
