/* engine/builtin.h: registration of the engine's built-in step kinds, split by file
 * (internal to engine/; everyone else calls eng_step_register_builtins). */
#pragma once

void eng_step_register_flow_builtins(void); /* wait_event, map: engine/builtin_flow.c */
