/* steps/steps.c: registration of the kinds in steps/. */
#include "steps/steps.h"

void step_register_all(void)
{
    step_llm_register();
    step_http_register();
}
