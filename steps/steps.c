/* steps/steps.c: registration of the kinds in steps/. */
#include "steps/sendledger.h" /* the messaging kinds' register functions */
#include "steps/steps.h"

void step_register_all(void)
{
    step_llm_register();
    step_http_register();
    step_email_register();
    step_sms_register();
    step_whatsapp_register();
    step_suppress_register();
}
