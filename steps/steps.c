/* steps/steps.c: registration of the kinds in steps/. */
#include "steps/sendledger.h" /* the messaging kinds' register functions */
#include "steps/steps.h"

#include <stdlib.h>
#include <string.h>

#include "steps/provider.h"

void step_register_all(void)
{
    const char *allow = getenv("FLOWD_ALLOW_PRIVATE_TARGETS");
    prov_allow_private_targets(allow && *allow && strcmp(allow, "0") != 0);
    step_llm_register();
    step_http_register();
    step_email_register();
    step_sms_register();
    step_whatsapp_register();
    step_suppress_register();
}
