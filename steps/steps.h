/* steps/steps.h: the step kinds built on the engine's interface (engine/step.h), one file each. */
#pragma once

/* Registers every kind of steps/ (llm, http, and the messaging kinds). Call once at start-up,
 * after eng_step_register_builtins and before any worker starts (the registry is not
 * thread-safe). Idempotent. */
void step_register_all(void);

/* One register function per kind file, called by step_register_all. */
void step_llm_register(void);  /* steps/llm.c: "llm" */
void step_http_register(void); /* steps/http.c: "http" */
void step_suppress_register(void); /* steps/suppress.c: "suppress" */
