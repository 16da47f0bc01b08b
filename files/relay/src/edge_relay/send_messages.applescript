-- Sends one or more bubbles through Messages.
-- Arguments: mode ("chat" or "handle"), target (chat guid or handle), then the bubbles.
on run argv
	set sendMode to item 1 of argv
	set targetId to item 2 of argv
	tell application "Messages"
		if sendMode is "chat" then
			set recipientRef to chat id targetId
		else
			set imessageAccount to 1st account whose service type = iMessage
			set recipientRef to participant targetId of imessageAccount
		end if
		repeat with i from 3 to (count of argv)
			send (item i of argv) to recipientRef
		end repeat
	end tell
end run
